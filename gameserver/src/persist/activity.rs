//! The activity log: joins, leaves, chat, actions and score changes, plus session starts and
//! ends, queued by the tick in a bounded buffer and written to PostgreSQL in batches.
//!
//! The tick never waits on the database: it hands records over with a non-blocking push, and a
//! full buffer drops the record and counts it. The writer flushes at least once per flush
//! interval; when PostgreSQL is unreachable it keeps the batch and retries with backoff while
//! the buffer absorbs what the game keeps producing. Every record carries a per-process
//! sequence number, so a batch retried after an unclear failure is written once.
//!
//! A batch PostgreSQL *refuses* (bad data rather than a lost connection) never stalls the log: a
//! missing daily partition is created on demand (for days within [`PARTITION_WINDOW_DAYS`] of
//! today), and what is still refused is split in halves until the refused records are found;
//! the rest is written and each refused record is set aside in `activity_rejected`, counted and
//! logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Partitions are made on demand for days at most this far from today.
pub const PARTITION_WINDOW_DAYS: i64 = 31;

/// One thing to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Activity {
        at_ms: u64,
        seq: u64,
        world: Arc<str>,
        bot: Option<String>,
        kind: &'static str,
        /// JSON object, or none.
        data: Option<String>,
    },
    SessionStart {
        id: String,
        bot: String,
        world: Arc<str>,
        at_ms: u64,
    },
    SessionEnd {
        id: String,
        at_ms: u64,
    },
}

/// The tick's side of the log: a bounded queue.
#[derive(Debug)]
pub struct ActivityLog {
    tx: mpsc::Sender<Record>,
    capacity: usize,
    seq: AtomicU64,
    metrics: Arc<Metrics>,
    /// Last time a drop was logged (Unix seconds), to log at most once a second.
    last_drop_log: AtomicU64,
}

impl ActivityLog {
    /// A log with room for `capacity` records; the receiver goes to [`run_writer`].
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (Self, mpsc::Receiver<Record>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let log = ActivityLog { tx, capacity, seq: AtomicU64::new(0), metrics, last_drop_log: AtomicU64::new(0) };
        (log, rx)
    }

    /// The next sequence number for an activity record.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Queue a record; never waits. A full queue drops it (counted, logged once a second).
    pub fn push(&self, record: Record) {
        if self.tx.try_send(record).is_err() {
            self.metrics.activity_dropped.inc();
            let now = crate::clock::unix_now();
            if self.last_drop_log.swap(now, Ordering::Relaxed) != now {
                tracing::error!(
                    dropped_total = self.metrics.activity_dropped.get(),
                    capacity = self.capacity,
                    "activity buffer full: records are being dropped"
                );
            }
        }
    }

    /// Records waiting to be written.
    pub fn queued(&self) -> usize {
        self.capacity - self.tx.capacity()
    }
}

/// How the writer behaves.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    pub flush_every: Duration,
    pub max_batch: usize,
    /// How long to keep retrying after the stop signal before giving up on what is left.
    pub final_deadline: Duration,
}

/// Write batches until `stop`, then flush what is left (within `final_deadline`).
pub async fn run_writer(
    pool: PgPool,
    mut rx: mpsc::Receiver<Record>,
    server_id: String,
    region: String,
    cfg: WriterConfig,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    use backon::BackoffBuilder;
    let mut batch: Vec<Record> = Vec::with_capacity(cfg.max_batch);
    let mut give_up_at = None;
    loop {
        // Gather until the flush interval passes or the batch is full.
        let deadline = tokio::time::Instant::now() + cfg.flush_every;
        let mut closed = false;
        while batch.len() < cfg.max_batch {
            let next = if give_up_at.is_some() {
                rx.try_recv().ok()
            } else {
                tokio::select! {
                    r = rx.recv() => {
                        if r.is_none() { closed = true; }
                        r
                    }
                    () = tokio::time::sleep_until(deadline) => None,
                    () = stop.cancelled() => {
                        give_up_at = Some(tokio::time::Instant::now() + cfg.final_deadline);
                        continue;
                    }
                }
            };
            match next {
                Some(r) => batch.push(r),
                None => break,
            }
        }
        if !batch.is_empty() {
            let mut delays = backon::ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .without_max_times()
                .build();
            let mut failures = 0u32;
            loop {
                match write_resilient(&pool, &batch, &server_id, &region).await {
                    Ok(rejected) => {
                        let n = batch.iter().filter(|r| matches!(r, Record::Activity { .. })).count();
                        let bad = rejected.iter().filter(|(r, _)| matches!(r, Record::Activity { .. })).count();
                        metrics.activity_written.inc_by((n - bad) as u64);
                        if !rejected.is_empty() {
                            set_aside(&pool, &server_id, &rejected, &metrics).await;
                        }
                        batch.clear();
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        metrics.activity_write_errors.inc();
                        if failures == 1 || failures.is_multiple_of(20) {
                            tracing::warn!(error = %e, queued = batch.len(), failures, "activity write failed; retrying");
                        }
                        if give_up_at.is_some_and(|t| tokio::time::Instant::now() >= t) {
                            let lost = batch.len() as u64 + rx.len() as u64;
                            metrics.activity_dropped.inc_by(lost);
                            tracing::error!(lost, "shutting down with PostgreSQL unavailable: activity records lost");
                            return;
                        }
                        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
                        if give_up_at.is_none() && stop.is_cancelled() {
                            give_up_at = Some(tokio::time::Instant::now() + cfg.final_deadline);
                        }
                    }
                }
            }
        }
        if (give_up_at.is_some() && rx.is_empty()) || closed {
            return;
        }
    }
}

/// Whether PostgreSQL refused the data itself (SQLSTATE classes 22 and 23): retrying the same
/// records cannot help, and the rest of the batch must not wait for them.
fn refused_data(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        _ => false,
    }
}

fn missing_partition(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23514") && db.message().contains("no partition"))
}

/// Write `batch`, making missing partitions and setting aside what PostgreSQL refuses. `Ok`:
/// every record was written but those returned (with why); `Err`: PostgreSQL could not be
/// reached — retry the whole batch.
async fn write_resilient(
    pool: &PgPool,
    batch: &[Record],
    server_id: &str,
    region: &str,
) -> Result<Vec<(Record, String)>, sqlx::Error> {
    match write_batch(pool, batch, server_id, region).await {
        Ok(()) => return Ok(Vec::new()),
        Err(e) if missing_partition(&e) => {
            make_partitions(pool, batch).await?;
            match write_batch(pool, batch, server_id, region).await {
                Ok(()) => return Ok(Vec::new()),
                Err(e) if refused_data(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) if refused_data(&e) => {}
        Err(e) => return Err(e),
    }
    let mut rejected = Vec::new();
    bisect(pool, batch, server_id, region, &mut rejected).await?;
    Ok(rejected)
}

/// Write the halves of a refused batch on their own, down to single records, collecting those
/// still refused.
fn bisect<'a>(
    pool: &'a PgPool,
    batch: &'a [Record],
    server_id: &'a str,
    region: &'a str,
    rejected: &'a mut Vec<(Record, String)>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'a>> {
    Box::pin(async move {
        if batch.len() == 1 {
            return match write_batch(pool, batch, server_id, region).await {
                Ok(()) => Ok(()),
                Err(e) if refused_data(&e) => {
                    rejected.push((batch[0].clone(), e.to_string()));
                    Ok(())
                }
                Err(e) => Err(e),
            };
        }
        let (a, b) = batch.split_at(batch.len() / 2);
        for half in [a, b] {
            match write_batch(pool, half, server_id, region).await {
                Ok(()) => {}
                Err(e) if refused_data(&e) => bisect(pool, half, server_id, region, rejected).await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
}

/// Create the daily partitions the batch's records fall into, within the window around today.
async fn make_partitions(pool: &PgPool, batch: &[Record]) -> Result<(), sqlx::Error> {
    let today = (crate::clock::unix_now() / 86_400) as i64;
    let mut days: Vec<i64> = batch
        .iter()
        .filter_map(|r| match r {
            Record::Activity { at_ms, .. } => Some((*at_ms / 86_400_000) as i64),
            _ => None,
        })
        .filter(|d| (d - today).abs() <= PARTITION_WINDOW_DAYS)
        .collect();
    days.sort_unstable();
    days.dedup();
    for day in days {
        let made: bool = sqlx::query_scalar(
            "SELECT arena_activity_partition_for((to_timestamp($1 * 86400) AT TIME ZONE 'UTC')::date)",
        )
        .bind(day)
        .fetch_one(pool)
        .await?;
        if made {
            tracing::info!(day, "activity partition made on demand");
        }
    }
    Ok(())
}

/// Keep refused records in `activity_rejected` (or, if even that fails, in the log).
async fn set_aside(pool: &PgPool, server_id: &str, rejected: &[(Record, String)], metrics: &Metrics) {
    metrics.activity_rejected.inc_by(rejected.len() as u64);
    let records: Vec<String> = rejected.iter().map(|(r, _)| record_json(r).to_string()).collect();
    let errors: Vec<String> = rejected.iter().map(|(_, e)| e.chars().take(500).collect()).collect();
    let kept = sqlx::query(
        "INSERT INTO activity_rejected (server_id, record, error)
         SELECT $1, r::jsonb, e FROM UNNEST($2::text[], $3::text[]) AS x(r, e)",
    )
    .bind(server_id)
    .bind(&records)
    .bind(&errors)
    .execute(pool)
    .await;
    match kept {
        Ok(_) => {
            tracing::error!(n = rejected.len(), first_error = %errors[0], "activity records refused by PostgreSQL; set aside in activity_rejected")
        }
        Err(e) => {
            metrics.activity_dropped.inc_by(rejected.len() as u64);
            for (r, why) in records.iter().zip(&errors) {
                tracing::error!(record = %r, refused = %why, error = %e, "activity record refused and could not be set aside");
            }
        }
    }
}

/// A record as JSON, for the dead-letter table.
pub fn record_json(r: &Record) -> serde_json::Value {
    match r {
        Record::Activity { at_ms, seq, world, bot, kind, data } => serde_json::json!({
            "type": "activity", "at_ms": at_ms, "seq": seq, "world": &**world, "bot": bot, "kind": kind,
            "data": data.as_deref().and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok()),
        }),
        Record::SessionStart { id, bot, world, at_ms } => {
            serde_json::json!({"type": "session_start", "id": id, "bot": bot, "world": &**world, "at_ms": at_ms})
        }
        Record::SessionEnd { id, at_ms } => serde_json::json!({"type": "session_end", "id": id, "at_ms": at_ms}),
    }
}

/// Write one batch in one transaction: activity rows, session starts and ends, bots seen.
async fn write_batch(pool: &PgPool, batch: &[Record], server_id: &str, region: &str) -> Result<(), sqlx::Error> {
    let mut at = Vec::new();
    let mut seq = Vec::new();
    let mut world = Vec::new();
    let mut bot: Vec<Option<String>> = Vec::new();
    let mut kind = Vec::new();
    let mut data: Vec<Option<String>> = Vec::new();
    let (mut s_id, mut s_bot, mut s_world, mut s_at) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut e_id, mut e_at) = (Vec::new(), Vec::new());
    for r in batch {
        match r {
            Record::Activity { at_ms, seq: n, world: w, bot: b, kind: k, data: d } => {
                at.push(*at_ms as i64);
                seq.push(*n as i64);
                world.push(w.to_string());
                bot.push(b.clone());
                kind.push(*k);
                data.push(d.clone());
            }
            Record::SessionStart { id, bot: b, world: w, at_ms } => {
                s_id.push(id.clone());
                s_bot.push(b.clone());
                s_world.push(w.to_string());
                s_at.push(*at_ms as i64);
            }
            Record::SessionEnd { id, at_ms } => {
                e_id.push(id.clone());
                e_at.push(*at_ms as i64);
            }
        }
    }
    let mut tx = pool.begin().await?;
    if !at.is_empty() {
        sqlx::query(
            "INSERT INTO activity (occurred_at, server_id, seq, world_id, bot_id, kind, data)
             SELECT to_timestamp(a.ms / 1000.0), $2, a.seq, a.world, a.bot, a.kind, a.data::jsonb
             FROM UNNEST($1::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[])
                  AS a(ms, seq, world, bot, kind, data)
             ON CONFLICT DO NOTHING",
        )
        .bind(&at)
        .bind(server_id)
        .bind(&seq)
        .bind(&world)
        .bind(&bot)
        .bind(&kind)
        .bind(&data)
        .execute(&mut *tx)
        .await?;
    }
    if !s_id.is_empty() {
        sqlx::query(
            "INSERT INTO sessions (session_id, bot_id, world_id, server_id, region, joined_at)
             SELECT s.id, s.bot, s.world, $5, $6, to_timestamp(s.ms / 1000.0)
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) AS s(id, bot, world, ms)
             ON CONFLICT (session_id) DO NOTHING",
        )
        .bind(&s_id)
        .bind(&s_bot)
        .bind(&s_world)
        .bind(&s_at)
        .bind(server_id)
        .bind(region)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO bots (bot_id, first_seen, last_seen)
             SELECT b.bot, to_timestamp(max(b.ms) / 1000.0), to_timestamp(max(b.ms) / 1000.0)
             FROM UNNEST($1::text[], $2::bigint[]) AS b(bot, ms) GROUP BY b.bot
             ON CONFLICT (bot_id) DO UPDATE SET last_seen = GREATEST(bots.last_seen, EXCLUDED.last_seen)",
        )
        .bind(&s_bot)
        .bind(&s_at)
        .execute(&mut *tx)
        .await?;
    }
    if !e_id.is_empty() {
        sqlx::query(
            "UPDATE sessions SET left_at = to_timestamp(e.ms / 1000.0)
             FROM UNNEST($1::text[], $2::bigint[]) AS e(id, ms)
             WHERE sessions.session_id = e.id AND sessions.left_at IS NULL",
        )
        .bind(&e_id)
        .bind(&e_at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// The activity records of one tick of a world: joins, leaves, chat, actions (with the names of
/// the bots involved) and score changes. `name` finds a bot's name by id in the world;
/// `changes.removed_names` holds those of bots that left in the tick.
pub fn records_of_tick(
    world_id: &Arc<str>,
    changes: &crate::world::Changes,
    name: impl Fn(arena_sdk::protocol::BotId) -> Option<String>,
    at_ms: u64,
    log: &ActivityLog,
) -> Vec<Record> {
    use arena_sdk::protocol::Event;
    let departed = |id| changes.removed.iter().position(|r| *r == id).map(|i| changes.removed_names[i].clone());
    let who = |id| name(id).or_else(|| departed(id));
    let mut out = Vec::with_capacity(changes.events.len());
    let mut record = |bot: Option<String>, kind: &'static str, data: Option<String>| {
        out.push(Record::Activity { at_ms, seq: log.next_seq(), world: Arc::clone(world_id), bot, kind, data });
    };
    for e in &changes.events {
        match e {
            Event::Joined { name, .. } => record(Some(name.clone()), "join", None),
            Event::Left { bot } => record(who(*bot), "leave", None),
            Event::Say { bot, text } => record(who(*bot), "say", Some(serde_json::json!({ "text": text }).to_string())),
            Event::Act { bot, action, target, hit } => {
                let data = serde_json::json!({
                    "action": action,
                    "target": target.and_then(&who),
                    "hit": hit,
                });
                record(who(*bot), "act", Some(data.to_string()));
            }
        }
    }
    for d in &changes.changed {
        // A new bot's whole record carries its score too: only changes count.
        if let (Some(score), None) = (d.score, &d.name) {
            record(who(d.id), "score", Some(serde_json::json!({ "score": score }).to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{World, WorldConfig};
    use arena_sdk::protocol::{Act, Command, Move};

    #[test]
    fn a_tick_becomes_activity_records() {
        let mut w = World::new(WorldConfig::default(), 3);
        let a = w.add_bot("alice").unwrap();
        let b = w.add_bot("bob").unwrap();
        let pb = w.bot(b).unwrap().clone();
        w.apply(a, &Command::Move(Move::To([pb.x, pb.y])));
        for _ in 0..400 {
            w.step();
        }
        let mut changes = crate::world::Changes::default();
        w.take_update(&mut changes);
        w.apply(a, &Command::Say("hi, \"bob\"".into()));
        w.apply(a, &Command::Act(Act { action: "high_five".into(), target: Some(b) }));
        w.remove_bot(b);
        w.step();
        w.take_update(&mut changes);
        let (log, _rx) = ActivityLog::new(16, Arc::new(Metrics::new()));
        let world: Arc<str> = Arc::from("w1");
        let recs = records_of_tick(&world, &changes, |id| w.bot(id).map(|b| b.name.clone()), 1_000, &log);
        let summary: Vec<(Option<&str>, &str, Option<serde_json::Value>)> = recs
            .iter()
            .map(|r| match r {
                Record::Activity { bot, kind, data, .. } => {
                    (bot.as_deref(), *kind, data.as_ref().map(|d| serde_json::from_str(d).unwrap()))
                }
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(summary[0], (Some("alice"), "say", Some(serde_json::json!({"text": "hi, \"bob\""}))));
        assert_eq!(
            summary[1],
            (Some("alice"), "act", Some(serde_json::json!({"action": "high_five", "target": "bob", "hit": true})))
        );
        assert_eq!(summary[2], (Some("bob"), "leave", None), "a bot that left still has its name");
        assert_eq!(summary[3], (Some("alice"), "score", Some(serde_json::json!({"score": 1}))));
        assert_eq!(summary.len(), 4, "{summary:?}");
        let seqs: Vec<u64> = recs.iter().map(|r| if let Record::Activity { seq, .. } = r { *seq } else { 0 }).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3]);
    }
}
