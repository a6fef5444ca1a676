//! The server's state in one place, and the flows that cross its parts: a join (ticket →
//! admission → placement → loading → seat), a resume, the lifecycle, the lease.
//!
//! Each part lives in a file of its own — `worlds.rs` (the world map, shards, seating),
//! `tickets.rs` (verification and replay), `admission.rs` (connection slots, overload),
//! `placement.rs` (what the allocator placed here), `lease.rs`, `load.rs`, `loading.rs`,
//! `saving.rs`, `activity_hooks.rs` — and this file only wires them together.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arena_sdk::allocator_api::RefusedTicket;
use arena_sdk::protocol::{ErrorCode, ErrorMsg};
use arena_service::supervisor::Supervisor;
use parking_lot::Mutex;

use crate::activity_hooks::ActivityHooks;
use crate::admission::{Admission, ConnectionLimits};
use crate::clock::{Monotonic, unix_now, unix_now_ms};
use crate::config::ServerConfig;
use crate::lease::Lease;
use crate::link::ClientLink;
use crate::load::{Load, LoadMeter};
use crate::metrics::Metrics;
use crate::persist::Persist;
use crate::placement::PlacementView;
use crate::room::RoomConfig;
use crate::tickets::TicketBook;
use crate::world::WorldConfig;
use crate::worlds::{Joined, MAX_UNREPORTED, RoomCell, Worlds, WorldsConfig};

/// Lifecycle of a gameserver, as `/readyz` and the registry see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Lifecycle {
    Starting = 0,
    Ready = 1,
    Draining = 2,
    Stopped = 3,
}

impl Lifecycle {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Lifecycle::Starting,
            1 => Lifecycle::Ready,
            2 => Lifecycle::Draining,
            _ => Lifecycle::Stopped,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Starting => "starting",
            Lifecycle::Ready => "ready",
            Lifecycle::Draining => "draining",
            Lifecycle::Stopped => "stopped",
        }
    }
}

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorMsg {
    ErrorMsg { code, message: message.into() }
}

/// Faults a test may inject (`--enable-fault-injection`, loopback only).
#[derive(Debug, Default)]
pub struct Faults {
    /// The shard that panics at its next tick (`usize::MAX`: none).
    pub panic_shard: AtomicUsize,
}

/// A seat held by a WebSocket (or any) connection.
pub type Seat = Joined<ClientLink>;

#[derive(Debug)]
pub struct Host {
    cfg: ServerConfig,
    metrics: Arc<Metrics>,
    clock: Monotonic,
    worlds: Worlds<ClientLink>,
    tickets: Mutex<TicketBook>,
    admission: Arc<Admission>,
    placement: Mutex<PlacementView>,
    lease: Mutex<Lease>,
    load: Mutex<LoadMeter>,
    last_load: Mutex<Load>,
    lifecycle: AtomicU8,
    next_conn_id: AtomicU64,
    persist: Option<Arc<Persist>>,
    /// Start time (Unix ms) and a counter: session ids unique across restarts.
    boot_ms: u64,
    sessions: AtomicU64,
    supervisor: Supervisor,
    faults: Faults,
}

impl Host {
    pub fn new(
        cfg: ServerConfig,
        metrics: Arc<Metrics>,
        persist: Option<Arc<Persist>>,
        supervisor: Supervisor,
    ) -> Arc<Self> {
        let durable = persist.is_some();
        let worlds_cfg = WorldsConfig {
            max_worlds: cfg.max_worlds,
            shards: cfg.shards.max(1),
            world: WorldConfig { tick_hz: cfg.tick_hz, ..cfg.world.clone() },
            room: RoomConfig {
                grace_ticks: cfg.ticks(cfg.resume_grace),
                slow_client_ticks: cfg.ticks(cfg.slow_client),
            },
            input_queue: cfg.input_queue,
            idle_unload_ticks: cfg.ticks(cfg.idle_unload),
            load_first: durable,
            save_before_unload: durable,
            suspend_keep: cfg.suspend_keep,
        };
        metrics.world_capacity.set(cfg.max_worlds as i64);
        let standalone = cfg.allocator.is_none();
        Arc::new(Host {
            worlds: Worlds::new(worlds_cfg),
            tickets: Mutex::new(TicketBook::new(cfg.ticket_keys.clone(), &cfg.server_id, cfg.max_used_tickets)),
            admission: Admission::new(ConnectionLimits {
                max_connections: arena_service::http::connection_cap(cfg.max_connections),
                max_pending: cfg.max_pending,
                max_pending_per_ip: cfg.max_pending_per_ip,
            }),
            placement: Mutex::new(PlacementView::new(standalone)),
            lease: Mutex::new(if standalone { Lease::Standalone } else { Lease::pending() }),
            load: Mutex::new(LoadMeter::new(cfg.load)),
            last_load: Mutex::new(Load::default()),
            cfg,
            metrics,
            clock: Monotonic::new(),
            lifecycle: AtomicU8::new(Lifecycle::Starting as u8),
            next_conn_id: AtomicU64::new(1),
            persist,
            boot_ms: unix_now_ms(),
            sessions: AtomicU64::new(0),
            supervisor,
            faults: Faults { panic_shard: AtomicUsize::new(usize::MAX) },
        })
    }

    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
    pub fn worlds(&self) -> &Worlds<ClientLink> {
        &self.worlds
    }
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }
    pub fn persist(&self) -> Option<&Arc<Persist>> {
        self.persist.as_ref()
    }
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }
    pub fn faults(&self) -> &Faults {
        &self.faults
    }
    pub fn placement(&self) -> &Mutex<PlacementView> {
        &self.placement
    }

    /// Monotonic time since the process started: the clock of limits, leases and budgets.
    pub fn now(&self) -> Duration {
        self.clock.now()
    }

    pub fn clock(&self) -> Monotonic {
        self.clock
    }

    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle::from_u8(self.lifecycle.load(Ordering::Acquire))
    }

    pub fn set_lifecycle(&self, l: Lifecycle) {
        self.lifecycle.store(l as u8, Ordering::Release);
    }

    /// Ready to take players: serving, nothing failed, and (with an allocator) holding a lease.
    pub fn is_ready(&self) -> bool {
        self.lifecycle() == Lifecycle::Ready && !self.supervisor.is_failed() && self.lease_valid()
    }

    /// A new connection's id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn lease_valid(&self) -> bool {
        self.lease.lock().valid(self.now())
    }

    /// The lease's time left (`None`: standalone, no lease needed).
    pub fn lease_remaining(&self) -> Option<Duration> {
        self.lease.lock().remaining(self.now())
    }

    /// A heartbeat sent at `sent_at` was acknowledged with a lease of `lease`.
    pub fn renew_lease(&self, sent_at: Duration, lease: Duration) {
        self.lease.lock().renew(sent_at, lease);
    }

    /// Record one shard tick's timing for the tick budget.
    pub fn record_tick(&self, scheduled: Duration, started: Duration, work: Duration) {
        self.load.lock().record(scheduled, started, work);
    }

    /// Read the load now (with the process's recent CPU use), feed admission, return it.
    pub fn measure_load(&self, cpu_cores: f32, machine_busy: f32, bots: u32) -> Load {
        let load = self.load.lock().load(self.now(), cpu_cores, machine_busy, bots);
        self.admission.set_load(load.tick, self.cfg.resume_below);
        *self.last_load.lock() = load;
        load
    }

    /// The last load reading.
    pub fn load(&self) -> Load {
        *self.last_load.lock()
    }

    /// Seat the bot of `ticket` in its world (created, and its saved state loaded, if needed) and
    /// send the welcome. The ticket is consumed only if this succeeds.
    pub async fn join(&self, ticket: &str, world_hint: Option<&str>, link: &ClientLink) -> Result<Seat, ErrorMsg> {
        if self.lifecycle() != Lifecycle::Ready {
            return Err(err(ErrorCode::Draining, "server is not taking players"));
        }
        let claims = self.tickets.lock().begin(ticket, world_hint, unix_now())?;
        let result = self.join_with(&claims.world, &claims.bot, claims.fence, link).await;
        let mut tickets = self.tickets.lock();
        match &result {
            Ok(seat) => {
                tickets.commit(&claims);
                let mut st = seat.cell.state.lock();
                if st.report.joined.len() < MAX_UNREPORTED {
                    st.report.joined.push(claims.nonce.clone());
                }
            }
            Err(e) => {
                tickets.abort(&claims);
                if e.code == ErrorCode::Overloaded
                    && let Some(cell) = self.worlds.get(&claims.world)
                {
                    // Its reservation can be freed at once rather than when it expires.
                    let mut st = cell.state.lock();
                    if st.report.refused.len() < MAX_UNREPORTED {
                        st.report.refused.push(RefusedTicket { nonce: claims.nonce.clone(), bot: claims.bot.clone() });
                    }
                }
            }
        }
        result
    }

    async fn join_with(&self, world: &str, bot: &str, fence: Option<u64>, link: &ClientLink) -> Result<Seat, ErrorMsg> {
        if !self.lease_valid() {
            return Err(err(
                ErrorCode::Unavailable,
                "this server is not in contact with the allocator; allocate again",
            ));
        }
        // A world being unloaded at this very moment is created afresh on the next try.
        for _ in 0..3 {
            let live = self.worlds.get(world).map(|c| c.state.lock().fence);
            self.placement.lock().may_load(world, fence, live)?;
            let cell = self.worlds.get_or_create(world)?;
            self.metrics.live_worlds.set(self.worlds.len() as i64);
            let persist = self.persist.as_deref();
            crate::loading::ensure_loaded(persist, &self.worlds, &self.metrics, &cell, fence.unwrap_or(0)).await?;
            {
                let mut st = cell.state.lock();
                if st.closed {
                    continue;
                }
                if self.admission.overloaded() && !st.room.has_seat(bot) {
                    return Err(err(
                        ErrorCode::Overloaded,
                        "server is past its tick budget and takes no new bots; allocate again in a few seconds",
                    ));
                }
                if let Some(f) = fence {
                    st.fence = st.fence.max(f);
                }
            }
            let seat = self.worlds.seat(&cell, bot, link)?;
            self.open_session(&cell, bot);
            return Ok(seat);
        }
        Err(err(ErrorCode::Unavailable, "world is being unloaded; retry"))
    }

    /// Take back a kept seat with a resume token and send the welcome.
    pub fn resume(&self, token: &str, link: &ClientLink) -> Result<Seat, ErrorMsg> {
        if self.lifecycle() != Lifecycle::Ready {
            return Err(err(ErrorCode::Draining, "server is not taking players"));
        }
        if !self.lease_valid() {
            return Err(err(
                ErrorCode::Unavailable,
                "this server is not in contact with the allocator; allocate again",
            ));
        }
        let seat = self.worlds.resume(token, link)?;
        let name = seat.cell.state.lock().room.seat(seat.bot).map(|s| s.name.clone()).unwrap_or_default();
        self.open_session(&seat.cell, &name);
        Ok(seat)
    }

    /// Start an activity-log session for a bot that took a seat without one on this server.
    fn open_session(&self, cell: &Arc<RoomCell<ClientLink>>, name: &str) {
        let Some(log) = self.persist.as_ref().and_then(|p| p.activity.as_ref()) else { return };
        let mut st = cell.state.lock();
        let Some(bot) = st.room.seats().iter().find(|s| s.name == name).map(|s| s.bot) else { return };
        if st.sessions.contains_key(&bot) {
            return;
        }
        let id = format!("{}:{}:{}", self.cfg.server_id, self.boot_ms, self.sessions.fetch_add(1, Ordering::Relaxed));
        st.sessions.insert(bot, id.clone());
        log.push(crate::persist::activity::Record::SessionStart {
            id,
            bot: name.to_owned(),
            world: Arc::clone(cell.world_id()),
            at_ms: unix_now_ms(),
        });
    }

    /// The hooks the shard ticks and evictions run with.
    pub fn hooks(&self) -> ActivityHooks<'_> {
        ActivityHooks::new(self.persist.as_ref().and_then(|p| p.activity.as_ref()), unix_now_ms())
    }

    /// Unload `world` now: every client is closed with `code` and its seats are dropped.
    pub fn evict(&self, world: &str, code: u16, reason: &str) {
        if self.worlds.evict(world, code, reason, &mut self.hooks()) {
            self.metrics.live_worlds.set(self.worlds.len() as i64);
        }
    }

    /// End every open activity session (the server is going away; the bots continue elsewhere).
    pub fn close_all_sessions(&self) {
        let mut hooks = self.hooks();
        for cell in self.worlds.cells() {
            let mut st = cell.state.lock();
            crate::activity_hooks::close_sessions(&mut hooks, &mut st, None);
        }
    }

    /// Forget expired used tickets; how many are remembered.
    pub fn prune_tickets(&self) -> usize {
        self.tickets.lock().prune(unix_now())
    }

    /// Begin draining: refuse new sessions.
    pub fn start_drain(&self) {
        self.set_lifecycle(Lifecycle::Draining);
    }
}
