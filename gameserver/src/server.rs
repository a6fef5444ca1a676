//! Wiring: listeners, shard tick tasks, housekeeping, HTTP, and the graceful drain.
//!
//! `Server::bind` binds both ports (port 0 picks free ones, which the tests use);
//! `Server::run(shutdown)` serves until `shutdown` resolves, then drains within the configured
//! bound: it stops accepting, closes every connection with 1001 "server draining" and waits
//! for them to go.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::config::ServerConfig;
use crate::host::{Host, Lifecycle, Store, TickScratch};
use crate::metrics::Metrics;
use crate::persist::activity::{WriterConfig, run_writer};
use crate::persist::{Persist, maintenance, snapshotter};
use crate::ws::listener;

#[derive(Debug)]
pub struct Server {
    host: Arc<Host>,
    ws: TcpListener,
    http: TcpListener,
}

impl Server {
    /// Bind the WebSocket and HTTP ports.
    /// Bind the WebSocket and HTTP ports and connect the persistence `cfg.persist` names.
    pub async fn bind(cfg: ServerConfig) -> anyhow::Result<Self> {
        let ws = listener::bind(cfg.ws_addr, cfg.listen_backlog)?;
        let http = TcpListener::bind(cfg.http_addr).await?;
        let metrics = Arc::new(Metrics::new());
        let persist = Persist::connect(cfg.persist.clone(), &cfg.server_id, Arc::clone(&metrics)).await?;
        let host = Host::new(cfg, metrics, persist.map(Arc::new));
        Ok(Server { host, ws, http })
    }

    pub fn ws_addr(&self) -> io::Result<SocketAddr> {
        self.ws.local_addr()
    }
    pub fn http_addr(&self) -> io::Result<SocketAddr> {
        self.http.local_addr()
    }
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Serve until `shutdown` resolves, then drain.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        self.spawn(shutdown).await.unwrap_or_else(|e| Err(io::Error::other(e)))
    }

    /// Start serving (the server is Ready when this returns); the handle resolves after
    /// `shutdown` resolved and the drain finished.
    pub fn spawn(self, shutdown: impl Future<Output = ()> + Send + 'static) -> JoinHandle<io::Result<()>> {
        let Server { host, ws, http } = self;
        let cfg = host.config().clone();
        let (stop_tx, stop_rx) = watch::channel(false);

        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        for shard in 0..host.shard_count() {
            tasks.push(tokio::spawn(run_shard(Arc::clone(&host), shard, stop_rx.clone())));
        }
        tasks.push(tokio::spawn(run_housekeeping(Arc::clone(&host), stop_rx.clone())));
        {
            let mut stop = stop_rx.clone();
            let app = crate::http::router(Arc::clone(&host));
            tasks.push(tokio::spawn(async move {
                let graceful = async move { until_true(&mut stop).await };
                if let Err(e) = axum::serve(http, app).with_graceful_shutdown(graceful).await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            }));
        }
        if let Some(link) = cfg.allocator.clone() {
            let ws_url = link.public_ws_url.clone().unwrap_or_else(|| {
                let addr = ws.local_addr().unwrap_or(cfg.ws_addr);
                format!("ws://{addr}/ws")
            });
            tracing::info!(allocator = %link.url, region = %link.region, %ws_url, "reporting to the allocator");
            tasks.push(tokio::spawn(crate::heartbeat::run(Arc::clone(&host), link, ws_url, stop_rx.clone())));
        }
        let (accept_stop_tx, accept_stop_rx) = watch::channel(false);
        let accept = tokio::spawn(listener::accept_loop(ws, Arc::clone(&host), accept_stop_rx));

        // Persistence: the activity writer outlives the ticks (it flushes what they produced),
        // so it has its own stop signal.
        let (persist_stop_tx, persist_stop_rx) = watch::channel(false);
        let mut writer = None;
        if let Some(p) = host.persist() {
            if let (Some(pool), Some(rx)) = (p.pool.clone(), p.activity_rx.lock().take()) {
                let wcfg = WriterConfig {
                    flush_every: p.cfg.flush_every,
                    max_batch: 10_000,
                    final_deadline: cfg.drain_timeout,
                };
                let region = cfg.allocator.as_ref().map_or_else(|| "local".to_owned(), |l| l.region.clone());
                writer = Some(tokio::spawn(run_writer(
                    pool.clone(),
                    rx,
                    cfg.server_id.clone(),
                    region,
                    wcfg,
                    Arc::clone(host.metrics()),
                    persist_stop_rx,
                )));
                tasks.push(tokio::spawn(run_maintenance(
                    pool,
                    p.cfg.partitions_ahead,
                    p.cfg.retention_days,
                    stop_rx.clone(),
                )));
            }
            if p.redis.is_some() {
                tasks.push(tokio::spawn(snapshotter::run(
                    Arc::clone(&host),
                    Store::Hot,
                    p.cfg.redis_snapshot_every,
                    stop_rx.clone(),
                )));
            }
            if p.pg.is_some() {
                tasks.push(tokio::spawn(snapshotter::run(
                    Arc::clone(&host),
                    Store::Durable,
                    p.cfg.pg_snapshot_every,
                    stop_rx.clone(),
                )));
            }
            tracing::info!("persistence: {}", p.describe());
        } else {
            tracing::info!("persistence: none (worlds live in memory only)");
        }

        host.set_lifecycle(Lifecycle::Ready);
        tracing::info!(server_id = %cfg.server_id, "ready");
        tokio::spawn(async move {
            shutdown.await;
            // Drain: no new connections, every client told, bounded wait.
            tracing::info!(connections = host.connection_count(), "draining");
            host.start_drain();
            accept_stop_tx.send_replace(true);
            let _ = accept.await;
            let drained = tokio::time::timeout(cfg.drain_timeout, async {
                while host.connection_count() > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            if drained.is_err() {
                tracing::warn!(left = host.connection_count(), "drain timed out; closing anyway");
            }
            host.set_lifecycle(Lifecycle::Stopped);
            stop_tx.send_replace(true);
            for t in tasks {
                let _ = t.await;
            }
            // The ticks have stopped: save every world (retrying within the drain bound), end
            // the sessions, flush the log.
            let mut all_saved = true;
            if let Some(p) = host.persist() {
                let deadline = tokio::time::Instant::now() + cfg.drain_timeout;
                if p.redis.is_some() {
                    all_saved &= snapshotter::save_all(&host, Store::Hot, deadline).await;
                }
                if p.pg.is_some() {
                    all_saved &= snapshotter::save_all(&host, Store::Durable, deadline).await;
                }
                host.close_all_sessions();
                if all_saved {
                    tracing::info!("final snapshots written");
                } else {
                    tracing::error!(
                        "final snapshots could not all be written; the worlds stay placed here until the allocator times this server out"
                    );
                }
            }
            persist_stop_tx.send_replace(true);
            if let Some(w) = writer {
                let _ = w.await;
            }
            // Let the allocator place the worlds elsewhere at once only when their state is saved.
            if let Some(link) = cfg.allocator.as_ref().filter(|_| all_saved) {
                crate::heartbeat::send_farewell(&host, link).await;
            }
            tracing::info!("stopped");
            Ok(())
        })
    }
}

async fn run_shard(host: Arc<Host>, shard: usize, mut stop: watch::Receiver<bool>) {
    let period = host.config().tick_interval();
    // Shards tick at staggered phases so their work spreads over the tick interval.
    let offset = period.mul_f64(shard as f64 / host.shard_count() as f64);
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut scratch = TickScratch::default();
    loop {
        tokio::select! {
            _ = interval.tick() => host.tick_shard(shard, &mut scratch),
            () = crate::server::until_true(&mut stop) => return,
        }
    }
}

async fn run_housekeeping(host: Arc<Host>, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = interval.tick() => host.housekeeping(),
            () = crate::server::until_true(&mut stop) => return,
        }
    }
}

/// Resolves once the watched flag is true (or its sender is gone).
pub async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

/// Activity partitions and snapshot pruning: at start, then hourly.
async fn run_maintenance(pool: sqlx::PgPool, ahead: u32, retention: u32, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => match maintenance::run(&pool, ahead, retention).await {
                Ok(m) if !m.skipped => tracing::info!(
                    partitions_created = m.partitions_created,
                    snapshots_pruned = m.snapshots_pruned,
                    "database maintenance done"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "database maintenance failed"),
            },
            () = until_true(&mut stop) => return,
        }
    }
}
