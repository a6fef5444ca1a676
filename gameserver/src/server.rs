//! Wiring: listeners, shard tick tasks, housekeeping, heartbeats, persistence, HTTP — all under
//! one supervisor — and the graceful drain.
//!
//! `Server::bind` binds both ports (port 0 picks free ones; with a ready file configured, the
//! bound addresses are written there once the server is ready). `Server::run(shutdown)` serves
//! until `shutdown` resolves or a supervised task fails, then drains within the configured
//! bound: it stops accepting, closes every connection with 1001 "server draining", waits for
//! exactly those connections to end, stops the ticks, saves every world, and says goodbye to
//! the allocator. It returns an error when a task failed, so the process exits non-zero.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::anyhow;
use arena_sdk::allocator_api::Endpoints;
use arena_service::supervisor::Supervisor;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::host::{Host, Lifecycle};
use crate::metrics::Metrics;
use crate::persist::activity::{WriterConfig, run_writer};
use crate::persist::{Persist, maintenance};
use crate::saving::{self, Store};
use crate::tick::TickScratch;
use crate::ws::listener;

/// What the ready file says.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyInfo {
    pub server_id: String,
    pub ws: SocketAddr,
    pub http: SocketAddr,
    pub ws_url: String,
    /// The QUIC endpoint (UDP) and the SHA-256 of its certificate (hex), when served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quic: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quic_cert_sha256: Option<String>,
    pub pid: u32,
}

#[derive(Debug)]
pub struct Server {
    host: Arc<Host>,
    ws: TcpListener,
    /// TLS for the WebSocket listener (`wss://`), when a certificate is configured.
    ws_tls: Option<Arc<rustls::ServerConfig>>,
    http: TcpListener,
    /// The QUIC endpoint and its certificate's SHA-256 (hex).
    quic: Option<(quinn::Endpoint, String)>,
    supervisor: Supervisor,
}

impl Server {
    /// Bind the WebSocket and HTTP ports and connect the persistence `cfg.persist` names.
    pub async fn bind(cfg: ServerConfig) -> anyhow::Result<Self> {
        let ws = listener::bind(cfg.ws_addr, cfg.listen_backlog)?;
        let ws_tls = match &cfg.ws_tls {
            Some((cert, key)) => {
                Some(crate::ws::tls::server_config(&crate::certificate::Identity::from_pem(cert, key)?)?)
            }
            None => None,
        };
        let http = TcpListener::bind(cfg.http_addr).await?;
        let quic = match &cfg.quic {
            None => None,
            Some(q) => {
                let identity = match &q.cert {
                    Some((cert, key)) => crate::certificate::Identity::from_pem(cert, key)?,
                    None => {
                        let names = vec!["localhost".to_owned(), q.addr.ip().to_string()];
                        crate::certificate::Identity::self_signed(&names)?
                    }
                };
                let endpoint = crate::quic::bind(q.addr, &identity, cfg.max_queued_bytes)?;
                Some((endpoint, identity.sha256_hex()))
            }
        };
        let metrics = Arc::new(Metrics::new());
        let persist = Persist::connect(cfg.persist.clone(), &cfg.server_id, Arc::clone(&metrics)).await?;
        let supervisor = Supervisor::new();
        let host = Host::new(cfg, metrics, persist.map(Arc::new), supervisor.clone());
        Ok(Server { host, ws, ws_tls, http, quic, supervisor })
    }

    /// The QUIC endpoint's address (UDP), when served.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().and_then(|(e, _)| e.local_addr().ok())
    }

    /// The SHA-256 (hex) of the QUIC certificate, when served.
    pub fn quic_cert_sha256(&self) -> Option<&str> {
        self.quic.as_ref().map(|(_, h)| h.as_str())
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

    /// Serve until `shutdown` resolves (or a task fails), then drain.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        self.spawn(shutdown).await.map_err(|e| anyhow!("server task: {e}"))?
    }

    /// Start serving; the handle resolves after `shutdown` resolved (or a task failed) and the
    /// drain finished.
    pub fn spawn(self, shutdown: impl Future<Output = ()> + Send + 'static) -> JoinHandle<anyhow::Result<()>> {
        let Server { host, ws, ws_tls, http, quic, supervisor: sup } = self;
        let quic_addr = quic.as_ref().and_then(|(e, _)| e.local_addr().ok());
        let quic_endpoint = quic.as_ref().map(|(e, _)| e.clone());
        let quic_cert_sha256 = quic.as_ref().map(|(_, h)| h.clone());
        let cfg = host.config().clone();
        let ws_addr = ws.local_addr().unwrap_or(cfg.ws_addr);
        let http_addr = http.local_addr().unwrap_or(cfg.http_addr);
        let ws_url = cfg
            .allocator
            .as_ref()
            .and_then(|l| l.public_ws_url.clone())
            .unwrap_or_else(|| format!("{}://{ws_addr}/ws", if ws_tls.is_some() { "wss" } else { "ws" }));
        let endpoints = Endpoints {
            ws: ws_url.clone(),
            quic: quic_addr.map(|a| {
                cfg.allocator.as_ref().and_then(|l| l.public_quic_url.clone()).unwrap_or_else(|| format!("quic://{a}"))
            }),
            // Published only for a certificate made at start: a configured one is verified by
            // its chain.
            quic_cert_sha256: quic_cert_sha256.clone().filter(|_| cfg.quic.as_ref().is_some_and(|q| q.cert.is_none())),
        };

        // Stop signals, in the order the drain uses them.
        let tell_drain = CancellationToken::new();
        let drain_told = CancellationToken::new();
        let accept_stop = CancellationToken::new();
        let drain = CancellationToken::new();
        let ticks_stop = CancellationToken::new();
        let persist_stop = CancellationToken::new();
        let http_stop = CancellationToken::new();
        let connections = TaskTracker::new();

        let mut world_tasks = Vec::new();
        for shard in 0..host.worlds().shard_count() {
            world_tasks.push(sup.spawn_critical(
                "shard",
                &ticks_stop,
                run_shard(Arc::clone(&host), shard, ticks_stop.clone()),
            ));
        }
        world_tasks.push(sup.spawn_critical(
            "housekeeping",
            &ticks_stop,
            run_housekeeping(Arc::clone(&host), ticks_stop.clone()),
        ));
        {
            let app = crate::http::router(Arc::clone(&host));
            let (limits, stop, open) = (cfg.http, http_stop.clone(), Some(host.metrics().http_connections.clone()));
            sup.spawn_critical("http", &http_stop, async move {
                if let Err(e) = arena_service::http::serve(http, app, limits, stop, open).await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            });
        }
        if let Some(link) = cfg.allocator.clone() {
            tracing::info!(allocators = ?link.urls, region = %link.region, %ws_url, quic = ?endpoints.quic, "reporting to the allocator");
            let drain = crate::heartbeat::DrainSignal { tell: tell_drain.clone(), told: drain_told.clone() };
            let task = crate::heartbeat::run(Arc::clone(&host), link, endpoints.clone(), ticks_stop.clone(), drain);
            world_tasks.push(sup.spawn_critical("heartbeat", &ticks_stop, task));
        }
        let accept = sup.spawn_critical(
            "accept",
            &accept_stop,
            listener::accept_loop(
                ws,
                Arc::clone(&host),
                ws_tls,
                accept_stop.clone(),
                drain.clone(),
                connections.clone(),
            ),
        );
        let quic_accept = quic.map(|(endpoint, sha256)| {
            tracing::info!(quic = ?endpoint.local_addr().ok(), cert_sha256 = %sha256, "serving QUIC");
            let (host, stop, drain, tracked) =
                (Arc::clone(&host), accept_stop.clone(), drain.clone(), connections.clone());
            sup.spawn_critical(
                "quic accept",
                &accept_stop,
                crate::quic::accept_loop(endpoint, host, stop, drain, tracked),
            )
        });

        // Persistence: the activity writer outlives the ticks (it flushes what they produced).
        let mut writer = None;
        if let Some(p) = host.persist() {
            if let (Some(pool), Some(rx)) = (p.pool.clone(), p.activity_rx.lock().take()) {
                let wcfg = WriterConfig {
                    flush_every: p.cfg.flush_every,
                    max_batch: 10_000,
                    final_deadline: cfg.drain_timeout,
                };
                let task = run_writer(
                    pool.clone(),
                    rx,
                    cfg.server_id.clone(),
                    cfg.region().to_owned(),
                    wcfg,
                    Arc::clone(host.metrics()),
                    persist_stop.clone(),
                );
                writer = Some(sup.spawn_critical("activity-writer", &persist_stop, task));
                let maint = run_maintenance(pool, p.cfg.partitions_ahead, p.cfg.retention_days, ticks_stop.clone());
                world_tasks.push(sup.spawn_critical("maintenance", &ticks_stop, maint));
            }
            if p.redis.is_some() {
                let task = saving::run(Arc::clone(&host), Store::Hot, p.cfg.redis_snapshot_every, ticks_stop.clone());
                world_tasks.push(sup.spawn_critical("snapshots-redis", &ticks_stop, task));
            }
            if p.pg.is_some() {
                let task = saving::run(Arc::clone(&host), Store::Durable, p.cfg.pg_snapshot_every, ticks_stop.clone());
                world_tasks.push(sup.spawn_critical("snapshots-postgres", &ticks_stop, task));
            }
            tracing::info!("persistence: {}", p.describe());
        } else {
            tracing::info!("persistence: none (worlds live in memory only)");
        }

        host.set_lifecycle(Lifecycle::Ready);
        tracing::info!(server_id = %cfg.server_id, ws = %ws_addr, http = %http_addr, "ready");
        if let Some(path) = &cfg.ready_file {
            let info = ReadyInfo {
                server_id: cfg.server_id.clone(),
                ws: ws_addr,
                http: http_addr,
                ws_url: ws_url.clone(),
                quic: quic_addr,
                quic_cert_sha256: quic_cert_sha256.clone(),
                pid: std::process::id(),
            };
            if let Err(e) = arena_service::ready::write(path, &info) {
                tracing::error!(path = %path.display(), error = %e, "cannot write the ready file");
            }
        }
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown => {}
                () = sup.failed() => tracing::error!(failure = ?sup.failure(), "draining after a failure"),
            }
            // Drain: no new connections, every client told, bounded wait for exactly those.
            tracing::info!(connections = host.metrics().connections.get(), "draining");
            host.start_drain();
            // The allocator learns first: a bot told to go that asks it at once is answered
            // "world unavailable, retry" (the world is moving), not sent back here.
            tell_drain.cancel();
            if let Some(link) = &cfg.allocator {
                let bound = crate::heartbeat::ATTEMPT_TIMEOUT * link.urls.len().max(1) as u32;
                if tokio::time::timeout(bound, drain_told.cancelled()).await.is_err() {
                    tracing::warn!("the allocator did not hear of the drain in time; closing clients anyway");
                }
            }
            accept_stop.cancel();
            let _ = accept.await;
            if let Some(q) = quic_accept {
                let _ = q.await;
            }
            drain.cancel();
            host.worlds().close_all(arena_sdk::protocol::close::GOING_AWAY, "server draining");
            connections.close();
            if tokio::time::timeout(cfg.drain_timeout, connections.wait()).await.is_err() {
                tracing::warn!(left = connections.len(), "drain timed out; closing anyway");
            }
            if let Some(endpoint) = quic_endpoint {
                // Whatever is still open is told, and the last close packets go out.
                let code = quinn::VarInt::from_u32(u32::from(arena_sdk::protocol::close::GOING_AWAY));
                endpoint.close(code, b"server draining");
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            }
            host.set_lifecycle(Lifecycle::Stopped);
            ticks_stop.cancel();
            for t in world_tasks {
                let _ = t.await;
            }
            // The ticks have stopped: save every world (retrying within the drain bound), end
            // the sessions, flush the log.
            let mut all_saved = true;
            if let Some(p) = host.persist() {
                let deadline = tokio::time::Instant::now() + cfg.drain_timeout;
                if p.redis.is_some() {
                    all_saved &= saving::save_all(&host, Store::Hot, deadline).await;
                }
                if p.pg.is_some() {
                    all_saved &= saving::save_all(&host, Store::Durable, deadline).await;
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
            persist_stop.cancel();
            if let Some(w) = writer {
                let _ = w.await;
            }
            // Let the allocator place the worlds elsewhere at once only when their state is saved.
            if let Some(link) = cfg.allocator.as_ref().filter(|_| all_saved) {
                crate::heartbeat::send_farewell(&host, link, &endpoints).await;
            }
            http_stop.cancel();
            sup.stop(Duration::from_secs(5)).await;
            tracing::info!("stopped");
            match sup.failure() {
                Some(f) => Err(anyhow!("a supervised task failed: {f}")),
                None => Ok(()),
            }
        })
    }
}

async fn run_shard(host: Arc<Host>, shard: usize, stop: CancellationToken) {
    let cfg = host.config();
    let period = cfg.tick_interval();
    // Shards tick at staggered phases so their work spreads over the tick interval.
    let offset = period.mul_f64(shard as f64 / host.worlds().shard_count() as f64);
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut scratch = TickScratch::default();
    let clock = host.clock();
    let m = Arc::clone(host.metrics());
    loop {
        let scheduled = tokio::select! {
            at = interval.tick() => at,
            () = stop.cancelled() => return,
        };
        let started = std::time::Instant::now();
        if host.faults().panic_shard.load(Ordering::Relaxed) == shard {
            panic!("fault injection: shard {shard} was told to panic");
        }
        let lease_valid = host.lease_valid();
        let mut hooks = host.hooks();
        let out = host.worlds().tick_shard(shard, clock.at(started), lease_valid, &mut scratch, &mut hooks);
        let work = started.elapsed();
        let (scheduled, started) = (clock.at(scheduled.into_std()), clock.at(started));
        host.record_tick(scheduled, started, work);
        let s = out.stats;
        m.bytes_sent.inc_by(s.bytes);
        m.frames_sent.inc_by(s.messages);
        m.updates_due.inc_by(s.due);
        m.updates_delivered.inc_by(s.delivered);
        m.clients_resynced.inc_by(s.resynced);
        m.input_queue.dec_by(s.inputs as i64);
        m.encode_errors.inc_by(s.encode_errors);
        if s.dropped > 0 {
            m.clients_dropped.get_or_create(&[("reason", "slow_consumer")]).inc_by(s.dropped);
        }
        if out.suspended > 0 {
            m.lease_lost.inc_by(out.suspended as u64);
            tracing::warn!(
                shard,
                worlds = out.suspended,
                "lease ran out: worlds suspended, their clients closed with 4007"
            );
        }
        if out.unloaded > 0 {
            m.live_worlds.set(host.worlds().len() as i64);
        }
        m.ticks.inc();
        m.tick_duration.observe(work.as_secs_f64());
        m.tick_lateness.observe(started.saturating_sub(scheduled).as_secs_f64());
        if work > period {
            m.tick_overruns.inc();
        }
    }
}

/// CPU time the process has used (user + system), from `/proc/self/stat` (in USER_HZ = 100 ticks
/// per second, as Linux exports it).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Every second: forget expired tickets, refresh the gauges, measure the load.
async fn run_housekeeping(host: Arc<Host>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    let mut last_cpu: Option<(std::time::Instant, Duration)> = None;
    let machine_stat = || std::fs::read_to_string("/proc/stat").ok().and_then(|s| crate::load::parse_proc_stat(&s));
    let mut last_machine = machine_stat();
    let mut last_connected = 0usize;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = stop.cancelled() => return,
        }
        let m = host.metrics();
        let cpu = process_cpu().zip(Some(std::time::Instant::now()));
        let cores = match (last_cpu, cpu) {
            (Some((t0, c0)), Some((c1, t1))) => {
                (c1.saturating_sub(c0)).as_secs_f32() / t1.duration_since(t0).as_secs_f32().max(1e-3)
            }
            _ => 0.0,
        };
        last_cpu = cpu.map(|(c, t)| (t, c));
        let machine = machine_stat();
        let machine_busy = match (last_machine, machine) {
            (Some(a), Some(b)) => crate::load::busy_share(a, b),
            _ => 0.0,
        };
        last_machine = machine;
        let (mut seats, mut connected, mut suspended) = (0, 0, 0);
        for cell in host.worlds().cells() {
            let st = cell.state.lock();
            seats += st.room.seats().len();
            connected += st.room.connected();
            suspended += usize::from(st.suspended_since.is_some());
        }
        // The CPU readings cover the last second: so do the bots they served.
        let served = (last_connected + connected) / 2;
        last_connected = connected;
        let load = host.measure_load(cores, machine_busy, served as u32);
        m.seats.set(seats as i64);
        m.connected_bots.set(connected as i64);
        m.worlds_suspended.set(suspended as i64);
        m.live_worlds.set(host.worlds().len() as i64);
        m.tick_load.set(f64::from(load.tick));
        m.machine_busy.set(f64::from(load.machine));
        let refusing = host.admission().overloaded();
        m.bot_room.set(i64::from(crate::load::room(&load, &host.config().load, connected as u32, refusing)));
        m.connections_pending.set(host.admission().pending() as i64);
        m.lease_remaining_seconds.set(host.lease_remaining().map_or(-1.0, |d| d.as_secs_f64()));
        m.ready.set(i64::from(host.is_ready()));
        m.used_tickets.set(host.prune_tickets() as i64);
        if let Some(log) = host.persist().and_then(|p| p.activity.as_ref()) {
            m.activity_queued.set(log.queued() as i64);
        }
    }
}

/// Activity partitions and snapshot pruning: at start, then hourly.
async fn run_maintenance(pool: sqlx::PgPool, ahead: u32, retention: u32, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => match maintenance::run(&pool, ahead, retention).await {
                Ok(m) if !m.skipped => tracing::info!(
                    partitions_created = m.partitions_created,
                    snapshots_pruned = m.snapshots_pruned,
                    rejected_pruned = m.rejected_pruned,
                    "database maintenance done"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "database maintenance failed"),
            },
            () = stop.cancelled() => return,
        }
    }
}
