//! Persistence against the real PostgreSQL and Redis: the activity log, sessions, partitions,
//! fenced snapshots, and a graceful shutdown that loses nothing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use arena_gameserver::ServerConfig;
use arena_gameserver::persist::PersistConfig;
use arena_gameserver::persist::snapshots::{Encoded, PgSnapshots, RedisSnapshots};
use arena_gameserver::room::SavedRoom;
use arena_sdk::Encoding;
use arena_sdk::client::Client;
use arena_sdk::protocol::{Act, BotState, Command, Move, ServerMsg};
use arena_testkit::stores::{TestDb, clear_redis, shared_redis, unique};
use common::{TestServer, config, recv_until};
use sqlx::Row;

fn persisted(db: &TestDb, redis_prefix: Option<&str>) -> ServerConfig {
    ServerConfig {
        persist: PersistConfig {
            database_url: Some(db.url.clone()),
            redis_url: redis_prefix.map(|_| shared_redis()),
            redis_prefix: redis_prefix.unwrap_or("{unused}").to_owned(),
            flush_every: Duration::from_millis(200),
            ..PersistConfig::default()
        },
        ..config()
    }
}

/// Send `commands` and wait until the server acknowledged the last one.
async fn play(c: &mut Client, commands: Vec<Command>) {
    let mut last = 0;
    for cmd in commands {
        last = c.input(cmd).await.unwrap();
        // Stay far below the rate limit.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    recv_until(c, |m, _| matches!(m, ServerMsg::Update(u) if u.ack_seq >= last)).await;
}

async fn wait_rows(pool: &sqlx::PgPool, sql: &'static str, want: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let n: i64 = sqlx::query(sql).fetch_one(pool).await.unwrap().try_get(0).unwrap();
        if n >= want || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn activity_and_sessions_reach_postgres() {
    let db = TestDb::create().await;
    let server = TestServer::start(persisted(&db, None)).await;
    let (mut a, _) = server.join(Encoding::MsgPack, "logged", "alice").await;
    let (b, wb) = server.join(Encoding::Json, "logged", "bob").await;
    let me = wb.snapshot.bots.iter().find(|x| x.name == "bob").unwrap().clone();
    // Alice walks to bob and high-fives him: act, then both scores change.
    play(&mut a, vec![Command::Move(Move::To([me.x, me.y]))]).await;
    recv_until(&mut a, |_, c| {
        c.mirror().unwrap().bot(c.mirror().unwrap().me()).is_some_and(|s| (s.x, s.y) == (me.x, me.y))
    })
    .await;
    play(
        &mut a,
        vec![
            Command::Say("hi bob, a \"quote\", a comma".into()),
            Command::Act(Act { action: "high_five".into(), target: Some(wb.bot) }),
        ],
    )
    .await;
    b.leave().await.unwrap();
    let pool = db.pool().await;
    let n = wait_rows(&pool, "SELECT count(*) FROM activity WHERE kind = 'leave'", 1).await;
    assert_eq!(n, 1);
    let rows = sqlx::query(
        "SELECT kind, bot_id, data::text FROM activity WHERE world_id = 'logged' ORDER BY occurred_at, seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let got: Vec<(String, Option<String>, Option<String>)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let kinds: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(kinds, ["join", "join", "say", "act", "score", "score", "leave"], "{got:?}");
    assert_eq!(got[2].2.as_deref(), Some(r#"{"text": "hi bob, a \"quote\", a comma"}"#));
    assert_eq!(got[3].2.as_deref(), Some(r#"{"hit": true, "action": "high_five", "target": "bob"}"#));
    // Sessions: bob's is closed, alice's open; the index answers "sessions of bot B".
    let sessions =
        sqlx::query("SELECT bot_id, left_at IS NOT NULL FROM sessions ORDER BY bot_id").fetch_all(&pool).await.unwrap();
    let s: Vec<(String, bool)> = sessions.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(s, vec![("alice".into(), false), ("bob".into(), true)]);
    let bots: i64 = sqlx::query("SELECT count(*) FROM bots").fetch_one(&pool).await.unwrap().get(0);
    assert_eq!(bots, 2);
    a.leave().await.unwrap();
    server.stop().await;
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn partitions_are_made_ahead_and_old_ones_detached() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    let parts = |pool: sqlx::PgPool| async move {
        sqlx::query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'activity' ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect::<Vec<_>>()
    };
    // The migration made yesterday .. today + 7.
    assert_eq!(parts(pool.clone()).await.len(), 9);
    sqlx::query(
        "CREATE TABLE activity_20200101 PARTITION OF activity FOR VALUES FROM ('2020-01-01') TO ('2020-01-02')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let m = arena_gameserver::persist::maintenance::run(&pool, 10, 30).await.unwrap();
    assert_eq!(m.partitions_created, 3, "today + 8, + 9, + 10");
    let now = parts(pool.clone()).await;
    assert!(!now.contains(&"activity_20200101".to_string()), "detached: {now:?}");
    let still: i64 = sqlx::query("SELECT count(*) FROM pg_class WHERE relname = 'activity_20200101'")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(still, 1, "a detached partition stays as a table");
    pool.close().await;
    db.drop_db().await;
}

fn encoded(world: &str, fence: u64, tick: u64) -> Encoded {
    let mut room = arena_gameserver::room::Room::<()>::new(
        arena_gameserver::world::World::new(Default::default(), 1),
        arena_gameserver::room::RoomConfig { grace_ticks: 10, slow_client_ticks: 10 },
    );
    room.join("b", "t".into(), 1, ()).unwrap();
    for _ in 0..tick {
        room.run_tick(&[]);
    }
    Encoded::new(world, fence, &room.save()).unwrap()
}

#[tokio::test]
async fn snapshot_writes_carry_fences_and_old_owners_are_refused() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    let pg = PgSnapshots::new(pool.clone(), "gs-old");
    assert!(pg.claim("w", 5).await.unwrap());
    assert!(pg.save(&[encoded("w", 5, 3)]).await.unwrap().is_empty());
    // A newer placement claims the world: the old owner's writes are refused from now on.
    let newer = PgSnapshots::new(pool.clone(), "gs-new");
    assert!(newer.claim("w", 9).await.unwrap());
    assert!(!pg.claim("w", 5).await.unwrap(), "the old owner cannot claim it back");
    assert_eq!(pg.save(&[encoded("w", 5, 4)]).await.unwrap(), vec!["w".to_string()]);
    assert!(newer.save(&[encoded("w", 9, 2)]).await.unwrap().is_empty());
    let newest = pg.load("w").await.unwrap().unwrap();
    assert_eq!((newest.fence, newest.tick), (9, 2), "fence first, then tick");
    // A world written for the first time is claimed on the way.
    assert!(pg.save(&[encoded("fresh", 1, 1)]).await.unwrap().is_empty());

    // Redis: the stored snapshot's fence decides, and every snapshot key expires.
    let prefix = format!("{{{}}}", unique("snap-"));
    let client = redis::Client::open(shared_redis()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client.clone()).await.unwrap();
    let hot = RedisSnapshots::new(conn, &prefix, std::time::Duration::from_secs(600));
    assert!(hot.save(&[encoded("w", 5, 3)]).await.unwrap().is_empty());
    assert!(hot.save(&[encoded("w", 9, 1)]).await.unwrap().is_empty(), "a newer placement writes");
    assert_eq!(hot.save(&[encoded("w", 5, 4)]).await.unwrap(), vec!["w".to_string()], "the old owner is refused");
    let back = hot.load("w").await.unwrap().unwrap();
    assert_eq!((back.fence, back.tick), (9, 1));
    let room: SavedRoom = back.decode().unwrap();
    assert_eq!(room.seats.len(), 1);
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg(format!("{prefix}:snap:w")).query_async(&mut con).await.unwrap();
    assert!((590_000..=600_000).contains(&ttl), "snapshot keys expire: {ttl}");
    clear_redis(&shared_redis(), &prefix).await;
    pool.close().await;
    db.drop_db().await;
}

/// Bots' visible state, by name.
fn by_name(bots: &[BotState]) -> BTreeMap<String, (String, u32, f32, f32)> {
    bots.iter().map(|b| (b.name.clone(), (b.status.clone(), b.score, b.tx, b.ty))).collect()
}

#[tokio::test]
async fn graceful_shutdown_loses_no_event_and_no_state() {
    let db = TestDb::create().await;
    let prefix = format!("{{{}}}", unique("grace-"));
    let cfg = persisted(&db, Some(&prefix));
    let server = TestServer::start(cfg.clone()).await;
    let mut bots = Vec::new();
    for name in ["b1", "b2", "b3"] {
        bots.push(server.join(Encoding::MsgPack, "keep", name).await.0);
    }
    let mut lines = Vec::new();
    for (i, c) in bots.iter_mut().enumerate() {
        let mut cmds = Vec::new();
        for n in 0..8 {
            let line = format!("line-{i}-{n}");
            lines.push(line.clone());
            cmds.push(Command::Say(line));
        }
        cmds.push(Command::Act(Act { action: format!("mood_{i}"), target: None }));
        cmds.push(Command::Move(Move::To([100.0 * (i as f32 + 1.0), 900.0])));
        play(c, cmds).await;
    }
    // What each bot last saw of itself.
    let mut seen = BTreeMap::new();
    for c in &bots {
        let m = c.mirror().unwrap();
        let me = m.bot(m.me()).unwrap().clone();
        seen.extend(by_name(&[me]));
    }
    assert_eq!(seen.len(), 3);

    // SIGTERM-equivalent: drain. Clients are told 1001; final snapshots; the log is flushed.
    server.stop().await;
    let pool = db.pool().await;
    let said: Vec<String> = sqlx::query("SELECT data->>'text' FROM activity WHERE kind = 'say'")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for l in &lines {
        assert!(said.contains(l), "{l} missing from {said:?}");
    }
    let open: i64 =
        sqlx::query("SELECT count(*) FROM sessions WHERE left_at IS NULL").fetch_one(&pool).await.unwrap().get(0);
    assert_eq!(open, 0, "sessions end when the server goes");
    let pg = PgSnapshots::new(pool.clone(), "reader").load("keep").await.unwrap().expect("a snapshot in PostgreSQL");
    let saved: SavedRoom = pg.decode().unwrap();
    let saved_bots: Vec<BotState> = saved.world.bots().cloned().collect();
    assert_eq!(by_name(&saved_bots), seen, "the durable snapshot holds what the bots saw");

    // A new server on the same stores: the world comes back with its bots.
    let again = TestServer::start(cfg).await;
    let (c, w) = again.join(Encoding::Json, "keep", "b2").await;
    assert_eq!(by_name(&w.snapshot.bots), seen, "restored from the snapshot");
    assert!(w.tick >= pg.tick);
    c.leave().await.unwrap();
    again.stop().await;
    clear_redis(&shared_redis(), &prefix).await;
    pool.close().await;
    db.drop_db().await;
}

/// A record PostgreSQL refuses never stalls the log: a day without a partition gets one made on
/// demand, a record no partition can hold is set aside in `activity_rejected`, and the rest of
/// its batch is written.
#[tokio::test]
async fn refused_activity_records_are_set_aside_and_the_rest_is_written() {
    use arena_gameserver::metrics::Metrics;
    use arena_gameserver::persist::activity::{ActivityLog, Record, WriterConfig, run_writer};
    let db = TestDb::create().await;
    let pool = db.pool().await;
    let metrics = std::sync::Arc::new(Metrics::new());
    let (log, rx) = ActivityLog::new(1000, std::sync::Arc::clone(&metrics));
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let day = 86_400_000;
    let world: std::sync::Arc<str> = std::sync::Arc::from("dl");
    let say = |at_ms: u64, text: &str| Record::Activity {
        at_ms,
        seq: log.next_seq(),
        world: std::sync::Arc::clone(&world),
        bot: Some("b".into()),
        kind: "say",
        data: Some(serde_json::json!({ "text": text }).to_string()),
    };
    // One batch: two ordinary lines, one ten days ahead (beyond the partitions made ahead), one
    // four hundred days ahead (beyond the window partitions are made for).
    for r in
        [say(now_ms, "now-1"), say(now_ms + 10 * day, "ten-days"), say(now_ms + 400 * day, "far"), say(now_ms, "now-2")]
    {
        log.push(r);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let cfg = WriterConfig {
        flush_every: Duration::from_millis(100),
        max_batch: 100,
        final_deadline: Duration::from_secs(5),
    };
    let writer =
        tokio::spawn(run_writer(pool.clone(), rx, "gs-dl".into(), "local".into(), cfg, metrics.clone(), stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let written: Vec<String> = sqlx::query("SELECT data->>'text' FROM activity WHERE world_id = 'dl' ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if written.len() == 3 {
            assert_eq!(written, vec!["now-1", "now-2", "ten-days"]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "written so far: {written:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rejected: Vec<(String, String)> = sqlx::query("SELECT record->'data'->>'text', error FROM activity_rejected")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, "far");
    assert!(rejected[0].1.contains("partition"), "{rejected:?}");
    assert_eq!(metrics.activity_rejected.get(), 1);
    assert_eq!(metrics.activity_written.get(), 3);
    assert_eq!(metrics.activity_dropped.get(), 0);
    // The log goes on.
    log.push(say(now_ms, "after"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metrics.activity_written.get() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "the log stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    writer.await.unwrap();
    pool.close().await;
    db.drop_db().await;
}
