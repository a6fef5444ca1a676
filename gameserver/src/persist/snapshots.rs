//! World snapshots: to Redis every second (hot), to PostgreSQL periodically and on drain
//! (durable). Each write carries the world's fence — the generation of the placement this server
//! holds — and is refused when the store already holds a newer one (Redis: the stored
//! snapshot's fence; PostgreSQL: the `worlds` row a new owner claims before it loads), so a
//! server that was paused or cut off and comes back can never overwrite the new owner's state.
//! A world that is placed (first time, or after its server died) starts from its newest snapshot
//! in either store. The gameserver reads and writes only its own keys (`<prefix>:snap:<world>`),
//! never the allocator's; Redis snapshots expire after a while (the durable copy is in
//! PostgreSQL).

use std::time::{Duration, Instant};

use redis::Script;
use redis::aio::ConnectionManager;
use sqlx::{PgPool, Row};

use crate::room::SavedRoom;

/// One world's state, encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub world: String,
    pub fence: u64,
    pub tick: u64,
    pub state: Vec<u8>,
    pub encode_us: u32,
}

impl Encoded {
    pub fn new(world: &str, fence: u64, room: &SavedRoom) -> Result<Self, String> {
        let started = Instant::now();
        let state = rmp_serde::to_vec(room).map_err(|e| e.to_string())?;
        Ok(Encoded {
            world: world.to_owned(),
            fence,
            tick: room.world.tick(),
            state,
            encode_us: started.elapsed().as_micros().min(u32::MAX as u128) as u32,
        })
    }

    pub fn decode(&self) -> Result<SavedRoom, String> {
        rmp_serde::from_slice(&self.state).map_err(|e| e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("postgres: {0}")]
    Pg(#[from] sqlx::Error),
    #[error("stored snapshot of {0} is unreadable: {1}")]
    Corrupt(String, String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The Redis side: one hash per world under the registry's prefix, written by a script that
/// checks the registry's placement and the stored fence.
pub struct RedisSnapshots {
    conn: ConnectionManager,
    prefix: String,
    write: Script,
    ttl: Duration,
}

impl std::fmt::Debug for RedisSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSnapshots").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

const WRITE_SCRIPT: &str = r"
-- KEYS: the snapshot key. ARGV: fence, tick, state, ttl (ms). Returns 'ok' or 'stale'.
local key, fence = KEYS[1], tonumber(ARGV[1])
local stored = redis.call('HGET', key, 'fence')
if stored and tonumber(stored) > fence then return 'stale' end
local t = redis.call('TIME')
local at = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('HSET', key, 'fence', ARGV[1], 'tick', ARGV[2], 'state', ARGV[3], 'at', at)
redis.call('PEXPIRE', key, ARGV[4])
return 'ok'
";

impl RedisSnapshots {
    /// Snapshots under `<prefix>:snap:<world>`, each expiring `ttl` after its last write.
    pub fn new(conn: ConnectionManager, prefix: &str, ttl: Duration) -> Self {
        RedisSnapshots { conn, prefix: prefix.to_owned(), write: Script::new(WRITE_SCRIPT), ttl }
    }

    fn key(&self, world: &str) -> String {
        format!("{}:snap:{world}", self.prefix)
    }

    /// Write every snapshot (one pipelined round trip); returns the worlds refused as stale.
    pub async fn save(&self, batch: &[Encoded]) -> Result<Vec<String>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        // Make sure the script is loaded, then send every EVALSHA in one pipeline.
        self.write.load_async(&mut conn).await?;
        let ttl = self.ttl.as_millis().max(1) as u64;
        let mut pipe = redis::pipe();
        for e in batch {
            pipe.cmd("EVALSHA")
                .arg(self.write.get_hash())
                .arg(1)
                .arg(self.key(&e.world))
                .arg(e.fence)
                .arg(e.tick)
                .arg(e.state.as_slice())
                .arg(ttl);
        }
        let answers: Vec<String> = pipe.query_async(&mut conn).await?;
        Ok(batch.iter().zip(answers).filter(|(_, a)| a == "stale").map(|(e, _)| e.world.clone()).collect())
    }

    pub async fn load(&self, world: &str) -> Result<Option<Encoded>, StoreError> {
        let (fence, tick, state): (Option<u64>, Option<u64>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(self.key(world))
            .arg("fence")
            .arg("tick")
            .arg("state")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(match (fence, tick, state) {
            (Some(fence), Some(tick), Some(state)) => {
                Some(Encoded { world: world.to_owned(), fence, tick, state, encode_us: 0 })
            }
            _ => None,
        })
    }
}

/// The PostgreSQL side.
#[derive(Debug, Clone)]
pub struct PgSnapshots {
    pool: PgPool,
    server_id: String,
}

impl PgSnapshots {
    pub fn new(pool: PgPool, server_id: &str) -> Self {
        PgSnapshots { pool, server_id: server_id.to_owned() }
    }

    /// Record that this server holds `world` with `fence`; false when a newer placement holds it.
    pub async fn claim(&self, world: &str, fence: u64) -> Result<bool, StoreError> {
        let current: i64 = sqlx::query(
            "INSERT INTO worlds (world_id, fence, server_id) VALUES ($1, $2, $3)
             ON CONFLICT (world_id) DO UPDATE SET
                 server_id = CASE WHEN EXCLUDED.fence >= worlds.fence THEN EXCLUDED.server_id ELSE worlds.server_id END,
                 fence = GREATEST(worlds.fence, EXCLUDED.fence),
                 updated_at = now()
             RETURNING fence",
        )
        .bind(world)
        .bind(fence as i64)
        .bind(&self.server_id)
        .fetch_one(&self.pool)
        .await?
        .try_get("fence")?;
        Ok(current <= fence as i64)
    }

    /// Insert the snapshots whose fence is still the newest; returns the worlds refused as stale.
    pub async fn save(&self, batch: &[Encoded]) -> Result<Vec<String>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let worlds: Vec<String> = batch.iter().map(|e| e.world.clone()).collect();
        let fences: Vec<i64> = batch.iter().map(|e| e.fence as i64).collect();
        let ticks: Vec<i64> = batch.iter().map(|e| e.tick as i64).collect();
        let states: Vec<Vec<u8>> = batch.iter().map(|e| e.state.clone()).collect();
        let encode: Vec<i32> = batch.iter().map(|e| e.encode_us.min(i32::MAX as u32) as i32).collect();
        let mut tx = self.pool.begin().await?;
        // Worlds this server writes for the first time are claimed on the way.
        sqlx::query(
            "INSERT INTO worlds (world_id, fence, server_id)
             SELECT w, f, $3 FROM UNNEST($1::text[], $2::bigint[]) AS x(w, f)
             ON CONFLICT (world_id) DO NOTHING",
        )
        .bind(&worlds)
        .bind(&fences)
        .bind(&self.server_id)
        .execute(&mut *tx)
        .await?;
        // The row lock (FOR SHARE) orders this write against a newer owner's claim.
        let written: Vec<String> = sqlx::query(
            "INSERT INTO world_snapshots (world_id, fence, tick, state, encode_us, server_id)
             SELECT s.w, s.f, s.t, s.st, s.us, $6
             FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bytea[], $5::int[]) AS s(w, f, t, st, us)
             JOIN (SELECT world_id, fence FROM worlds WHERE world_id = ANY($1) FOR SHARE) w
               ON w.world_id = s.w AND w.fence <= s.f
             ON CONFLICT DO NOTHING
             RETURNING world_id",
        )
        .bind(&worlds)
        .bind(&fences)
        .bind(&ticks)
        .bind(&states)
        .bind(&encode)
        .bind(&self.server_id)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| r.try_get::<String, _>("world_id"))
        .collect::<Result<_, _>>()?;
        tx.commit().await?;
        // A snapshot that already existed (same fence and tick) is not stale: only a newer
        // fence refuses a write.
        let stale: Vec<String> = if written.len() == batch.len() {
            Vec::new()
        } else {
            let newer: Vec<String> = sqlx::query(
                "SELECT x.w FROM UNNEST($1::text[], $2::bigint[]) AS x(w, f)
                 JOIN worlds ON worlds.world_id = x.w WHERE worlds.fence > x.f",
            )
            .bind(&worlds)
            .bind(&fences)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
            newer
        };
        Ok(stale)
    }

    /// The newest snapshot of `world` (highest fence, then tick).
    pub async fn load(&self, world: &str) -> Result<Option<Encoded>, StoreError> {
        let row = sqlx::query(
            "SELECT fence, tick, state, encode_us FROM world_snapshots WHERE world_id = $1
             ORDER BY fence DESC, tick DESC LIMIT 1",
        )
        .bind(world)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(Encoded {
                world: world.to_owned(),
                fence: r.try_get::<i64, _>("fence")? as u64,
                tick: r.try_get::<i64, _>("tick")? as u64,
                state: r.try_get("state")?,
                encode_us: r.try_get::<i32, _>("encode_us")? as u32,
            }),
            None => None,
        })
    }
}

/// The newer of two snapshots: the higher fence, then the later tick.
pub fn newest(a: Option<Encoded>, b: Option<Encoded>) -> Option<Encoded> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if (b.fence, b.tick) > (a.fence, a.tick) { b } else { a }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(fence: u64, tick: u64) -> Encoded {
        Encoded { world: "w".into(), fence, tick, state: vec![], encode_us: 0 }
    }

    #[test]
    fn the_higher_fence_wins_then_the_later_tick() {
        assert_eq!(newest(Some(enc(2, 5)), Some(enc(1, 900))).unwrap().fence, 2);
        assert_eq!(newest(Some(enc(2, 5)), Some(enc(2, 6))).unwrap().tick, 6);
        assert_eq!(newest(None, Some(enc(1, 1))), Some(enc(1, 1)));
        assert_eq!(newest(None, None), None);
    }
}
