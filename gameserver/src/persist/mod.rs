//! Durable state: the activity log and world snapshots in PostgreSQL, hot snapshots in Redis.
//!
//! Both are optional. With neither configured the server keeps worlds in memory only (the
//! embedded default), and says so when it starts.

pub mod activity;
pub mod maintenance;
pub mod snapshots;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::room::SavedRoom;
use activity::{ActivityLog, Record};
use snapshots::{Encoded, PgSnapshots, RedisSnapshots, StoreError, newest};

/// Where and how often to persist.
#[derive(Debug, Clone)]
pub struct PersistConfig {
    /// PostgreSQL: activity log and durable snapshots.
    pub database_url: Option<String>,
    /// Redis: snapshots every second, under `<redis_prefix>:snap:<world>`.
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// A Redis snapshot expires this long after its last write (PostgreSQL keeps the durable
    /// copy).
    pub redis_snapshot_ttl: Duration,
    /// Deadline of every call to a store.
    pub store_timeout: Duration,
    /// Apply the migrations at start.
    pub migrate: bool,
    /// The activity log is written at least this often.
    pub flush_every: Duration,
    /// Activity records held while PostgreSQL is slow or down; beyond, records are dropped.
    pub activity_buffer: usize,
    pub redis_snapshot_every: Duration,
    pub pg_snapshot_every: Duration,
    /// Activity partitions older than this many days are detached (0: never).
    pub retention_days: u32,
    /// Daily activity partitions created ahead.
    pub partitions_ahead: u32,
}

impl Default for PersistConfig {
    fn default() -> Self {
        PersistConfig {
            database_url: None,
            redis_url: None,
            redis_prefix: "{arena}".to_owned(),
            redis_snapshot_ttl: Duration::from_secs(24 * 3600),
            store_timeout: Duration::from_secs(2),
            migrate: false,
            flush_every: Duration::from_secs(1),
            activity_buffer: 200_000,
            redis_snapshot_every: Duration::from_secs(1),
            pg_snapshot_every: Duration::from_secs(60),
            retention_days: 30,
            partitions_ahead: 7,
        }
    }
}

impl PersistConfig {
    pub fn enabled(&self) -> bool {
        self.database_url.is_some() || self.redis_url.is_some()
    }
}

/// Connections and queues of an enabled persistence.
pub struct Persist {
    pub cfg: PersistConfig,
    pub pool: Option<PgPool>,
    pub activity: Option<ActivityLog>,
    pub redis: Option<RedisSnapshots>,
    pub pg: Option<PgSnapshots>,
    /// Taken by the activity writer when it starts.
    pub activity_rx: Mutex<Option<mpsc::Receiver<Record>>>,
}

impl std::fmt::Debug for Persist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persist").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// Connect to PostgreSQL.
pub async fn connect_pg(url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new().max_connections(4).acquire_timeout(Duration::from_secs(5)).connect(url).await
}

/// A Redis connection whose every command answers within `timeout` (an error otherwise), that
/// reconnects by itself within a second of Redis coming back.
pub async fn connect_redis(client: redis::Client, timeout: Duration) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "Redis did not answer in time")))?
}

/// Apply the migrations in `migrations/`.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("../migrations").run(pool).await
}

impl Persist {
    /// Connect what `cfg` names; `None` when nothing is configured.
    pub async fn connect(cfg: PersistConfig, server_id: &str, metrics: Arc<Metrics>) -> anyhow::Result<Option<Self>> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let pool = match &cfg.database_url {
            Some(url) => {
                let pool = connect_pg(url).await.context("connecting to PostgreSQL")?;
                if cfg.migrate {
                    migrate(&pool).await.context("applying migrations")?;
                }
                Some(pool)
            }
            None => None,
        };
        let redis = match &cfg.redis_url {
            Some(url) => {
                let client = redis::Client::open(url.as_str()).context("Redis URL")?;
                let conn = connect_redis(client, cfg.store_timeout).await.context("connecting to Redis")?;
                Some(RedisSnapshots::new(conn, &cfg.redis_prefix, cfg.redis_snapshot_ttl))
            }
            None => None,
        };
        let (activity, rx) = match &pool {
            Some(_) => {
                let (log, rx) = ActivityLog::new(cfg.activity_buffer, metrics);
                (Some(log), Some(rx))
            }
            None => (None, None),
        };
        let pg = pool.as_ref().map(|p| PgSnapshots::new(p.clone(), server_id));
        Ok(Some(Persist { cfg, pool, activity, redis, pg, activity_rx: Mutex::new(rx) }))
    }

    /// One line for the startup log.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.pool.is_some() {
            parts.push(format!(
                "PostgreSQL (activity log flushed every {:?}, snapshots every {:?})",
                self.cfg.flush_every, self.cfg.pg_snapshot_every
            ));
        }
        if self.redis.is_some() {
            parts.push(format!("Redis (snapshots every {:?})", self.cfg.redis_snapshot_every));
        }
        parts.join(" + ")
    }

    /// Run a store call under the store deadline.
    async fn bounded<T>(&self, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        tokio::time::timeout(self.cfg.store_timeout, call)
            .await
            .map_err(|_| StoreError::Timeout(self.cfg.store_timeout))?
    }

    /// Record that this server holds `world` with `fence`. False: a newer placement holds it.
    pub async fn claim(&self, world: &str, fence: u64) -> Result<bool, StoreError> {
        match &self.pg {
            Some(pg) => self.bounded(pg.claim(world, fence)).await,
            None => Ok(true),
        }
    }

    /// The newest saved state of `world`, from either store, with the fence it was saved under.
    pub async fn load(&self, world: &str) -> Result<Option<(u64, SavedRoom)>, StoreError> {
        let hot = match &self.redis {
            Some(r) => self.bounded(r.load(world)).await?,
            None => None,
        };
        let durable = match &self.pg {
            Some(p) => self.bounded(p.load(world)).await?,
            None => None,
        };
        match newest(hot, durable) {
            Some(e) => {
                e.decode().map(|room| Some((e.fence, room))).map_err(|err| StoreError::Corrupt(world.to_owned(), err))
            }
            None => Ok(None),
        }
    }

    /// Save to Redis; the worlds refused because a newer placement holds them.
    pub async fn save_hot(&self, batch: &[Encoded]) -> Result<Vec<String>, StoreError> {
        match &self.redis {
            Some(r) => self.bounded(r.save(batch)).await,
            None => Ok(Vec::new()),
        }
    }

    /// Save to PostgreSQL; the worlds refused because a newer placement holds them.
    pub async fn save_durable(&self, batch: &[Encoded]) -> Result<Vec<String>, StoreError> {
        match &self.pg {
            Some(p) => self.bounded(p.save(batch)).await,
            None => Ok(Vec::new()),
        }
    }
}
