//! The worlds of one process: creation on first join, seating, the fixed tick, unloading.
//!
//! Each world lives in a [`RoomCell`]: an input queue that reader tasks push to, and the
//! [`Room`] itself behind a lock taken by the world's tick and, briefly, by joins. Worlds are
//! spread over a few shard tasks; each shard ticks its worlds in turn, encodes each world's update
//! once per encoding in use and writes it to every client straight from the tick (see
//! `docs/benchmarks.md` for why no per-connection writer task).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arena_sdk::Encoding;
use arena_sdk::allocator_api::{HeartbeatReply, WorldReport};
use arena_sdk::codec::{ack_bytes, encode_update};
use arena_sdk::protocol::{BotId, Command, ErrorCode, ErrorMsg, ServerMsg, Tick, close};
use arena_sdk::ticket::{TicketClaims, TicketError, TicketVerifier, new_nonce};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::persist::Persist;
use crate::persist::activity::{Record, records_of_tick};
use crate::persist::snapshots::Encoded;
use crate::room::{LagAction, QueuedInput, Room, RoomConfig};
use crate::world::{World, WorldConfig};
use crate::ws::conn::{Conn, Delivery};
use crate::ws::frame;
use crate::ws::handshake::Admission;
use arena_sdk::rng::seed_of;

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

/// A seat taken by a connection.
#[derive(Debug, Clone)]
pub struct Joined {
    pub cell: Arc<RoomCell>,
    pub bot: BotId,
    pub ack_seq: u32,
}

struct RoomState {
    room: Room<Arc<Conn>>,
    /// Its saved state (if any) was loaded: it may tick and take bots.
    loaded: bool,
    /// Unloaded: joins that still hold this cell must look again.
    closed: bool,
    /// The world's placement generation (fencing token), from tickets and the registry; 0 unknown.
    fence: u64,
    /// Ticket nonces (allocator reservations) used to join since the last report.
    joined: Vec<String>,
    /// The last tick saved to Redis and to PostgreSQL.
    saved_hot: Tick,
    saved_durable: Tick,
    /// Open sessions (activity log) by bot.
    sessions: HashMap<BotId, String>,
}

/// Most joins remembered between two reports; beyond, reservations simply expire.
const MAX_JOINED_UNREPORTED: usize = arena_sdk::allocator_api::MAX_JOINED_PER_REPORT;

/// One world: its input queue and its room.
pub struct RoomCell {
    world_id: Arc<str>,
    inbox: Mutex<Vec<QueuedInput>>,
    inbox_cap: usize,
    state: Mutex<RoomState>,
    /// Loading its saved state happens once, by the first join; later joins wait for it.
    loader: tokio::sync::OnceCell<Result<(), ErrorMsg>>,
}

impl std::fmt::Debug for RoomCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomCell").field("world_id", &self.world_id).finish_non_exhaustive()
    }
}

/// The world's input queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl RoomCell {
    pub fn world_id(&self) -> &str {
        &self.world_id
    }

    /// Queue an input for the next tick.
    pub fn push_input(&self, bot: BotId, seq: u32, command: Command, metrics: &Metrics) -> Result<(), Busy> {
        let mut inbox = self.inbox.lock();
        if inbox.len() >= self.inbox_cap {
            metrics.inputs_dropped.inc();
            return Err(Busy);
        }
        inbox.push(QueuedInput { bot, seq, command });
        metrics.inputs.inc();
        metrics.input_queue.inc();
        Ok(())
    }

    pub fn request_resync(&self, bot: BotId) {
        self.state.lock().room.request_resync(bot);
    }

    /// The connection dropped: keep the seat for the grace period.
    pub fn disconnect(&self, bot: BotId, conn_id: u64) {
        self.state.lock().room.disconnect(bot, conn_id);
    }

    /// The client left: free the seat.
    pub fn leave(&self, bot: BotId, conn_id: u64) {
        self.state.lock().room.leave(bot, conn_id);
    }
}

/// Buffers a shard reuses from tick to tick.
#[derive(Debug, Default)]
pub struct TickScratch {
    inputs: Vec<QueuedInput>,
    msg_head: Vec<u8>,
    msg_tail: Vec<u8>,
    /// This tick's update frame per encoding, whole; only the `ack_seq` bytes at
    /// `ack_at[e]` change from one client to the next.
    frames: [Vec<u8>; 2],
    ack_at: [usize; 2],
    marks: Vec<(usize, SeatMark)>,
    dropped: Vec<(BotId, u64)>,
}

/// A seat state change decided while the room was borrowed for writing.
#[derive(Debug, Clone, Copy)]
enum SeatMark {
    Lagging,
    Resynced,
}

/// What one shard tick did, summed before touching shared counters.
#[derive(Debug, Default, Clone, Copy)]
struct TickStats {
    bytes: u64,
    frames: u64,
    due: u64,
    delivered: u64,
    resynced: u64,
    dropped: u64,
    inputs: i64,
}

/// Remembers used ticket nonces until their tickets expire.
#[derive(Debug, Default)]
struct UsedTickets {
    expiry: HashMap<String, u64>,
}

pub struct Host {
    cfg: ServerConfig,
    metrics: Arc<Metrics>,
    verifier: TicketVerifier,
    used: Mutex<UsedTickets>,
    rooms: Mutex<HashMap<Arc<str>, Arc<RoomCell>>>,
    shards: Vec<Mutex<Vec<Arc<RoomCell>>>>,
    lifecycle: AtomicU8,
    connections: AtomicUsize,
    next_conn_id: AtomicU64,
    epoch: Instant,
    room_config: RoomConfig,
    idle_unload_ticks: u64,
    drain: watch::Sender<bool>,
    persist: Option<Arc<Persist>>,
    /// Start time (Unix ms) and a counter: session ids unique across restarts.
    boot_ms: u64,
    sessions: AtomicU64,
    /// Connections per address that have not joined yet (bounded by the connection limit).
    unjoined: Mutex<HashMap<IpAddr, usize>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("server_id", &self.cfg.server_id).finish_non_exhaustive()
    }
}

impl Host {
    pub fn new(cfg: ServerConfig, metrics: Arc<Metrics>, persist: Option<Arc<Persist>>) -> Arc<Self> {
        let shards = (0..cfg.shards.max(1)).map(|_| Mutex::new(Vec::new())).collect();
        metrics.world_capacity.set(cfg.max_worlds as i64);
        Arc::new(Host {
            verifier: TicketVerifier::new(cfg.ticket_keys.clone()),
            room_config: RoomConfig {
                grace_ticks: cfg.ticks(cfg.resume_grace),
                slow_client_ticks: cfg.ticks(cfg.slow_client),
            },
            idle_unload_ticks: cfg.ticks(cfg.idle_unload),
            cfg,
            metrics,
            used: Mutex::new(UsedTickets::default()),
            rooms: Mutex::new(HashMap::new()),
            shards,
            lifecycle: AtomicU8::new(Lifecycle::Starting as u8),
            connections: AtomicUsize::new(0),
            next_conn_id: AtomicU64::new(1),
            epoch: Instant::now(),
            drain: watch::Sender::new(false),
            persist,
            boot_ms: unix_now_ms(),
            sessions: AtomicU64::new(0),
            unjoined: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle::from_u8(self.lifecycle.load(Ordering::Acquire))
    }
    pub fn set_lifecycle(&self, l: Lifecycle) {
        self.lifecycle.store(l as u8, Ordering::Release);
    }

    /// Time since the host started, the clock of rate limits.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Whether a new connection may start a session.
    pub fn admission(&self) -> Admission {
        match self.lifecycle() {
            Lifecycle::Draining | Lifecycle::Stopped => Admission::Draining,
            // The connection asking is counted already.
            _ if self.connections.load(Ordering::Relaxed) > self.cfg.max_connections => Admission::Full,
            _ => Admission::Open,
        }
    }

    /// Count a connection in; returns its id.
    pub fn connection_opened(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.metrics.connections.inc();
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
        self.metrics.connections.dec();
    }

    /// Count a connection from `ip` that has not joined yet; false when that address already
    /// has as many as it may (they hold slots until they join or time out).
    pub fn unjoined_opened(&self, ip: IpAddr) -> bool {
        let mut m = self.unjoined.lock();
        let n = m.entry(ip).or_insert(0);
        if *n >= self.cfg.max_unjoined_per_ip {
            Metrics::count(&self.metrics.clients_dropped, "reason", "unjoined_per_ip");
            return false;
        }
        *n += 1;
        true
    }

    /// The connection from `ip` joined or ended.
    pub fn unjoined_closed(&self, ip: IpAddr) {
        let mut m = self.unjoined.lock();
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn live_worlds(&self) -> usize {
        self.rooms.lock().len()
    }

    /// Check a ticket: signature, expiry, world and server binding, single use.
    pub fn check_ticket(&self, ticket: &str, world_hint: Option<&str>) -> Result<TicketClaims, ErrorMsg> {
        let now_unix = unix_now();
        let claims = self.verifier.verify(ticket, now_unix).map_err(|e| match e {
            TicketError::Expired => err(ErrorCode::TicketExpired, "ticket has expired; allocate again"),
            other => err(ErrorCode::TicketInvalid, other.to_string()),
        })?;
        if let Some(w) = world_hint
            && w != claims.world
        {
            return Err(err(ErrorCode::TicketWrongWorld, format!("ticket is for world {:?}, not {w:?}", claims.world)));
        }
        if let Some(s) = &claims.server
            && *s != self.cfg.server_id
        {
            return Err(err(ErrorCode::TicketWrongServer, format!("ticket is for server {s:?}")));
        }
        let mut used = self.used.lock();
        if used.expiry.contains_key(&claims.nonce) {
            return Err(err(ErrorCode::TicketReused, "ticket was already used"));
        }
        if used.expiry.len() >= self.cfg.max_used_tickets {
            used.expiry.retain(|_, exp| *exp > now_unix);
            if used.expiry.len() >= self.cfg.max_used_tickets {
                return Err(err(ErrorCode::ServerFull, "too many joins in flight; retry shortly"));
            }
        }
        used.expiry.insert(claims.nonce.clone(), claims.exp);
        Ok(claims)
    }

    fn new_resume_token(world: &str) -> String {
        format!("{world}.{}", new_nonce())
    }

    /// Seat the ticket's bot in its world (created, and its saved state loaded, if needed) and
    /// send the welcome.
    pub async fn join(&self, claims: &TicketClaims, conn: &Arc<Conn>) -> Result<Joined, ErrorMsg> {
        if self.lifecycle() != Lifecycle::Ready {
            return Err(err(ErrorCode::Draining, "server is not taking players"));
        }
        // A world being unloaded at this very moment is created afresh on the next try.
        for _ in 0..3 {
            let cell = self.room_for(&claims.world)?;
            self.ensure_loaded(&cell, claims.fence.unwrap_or(0)).await?;
            let mut st = cell.state.lock();
            if st.closed {
                continue;
            }
            let token = Self::new_resume_token(&claims.world);
            let seated = st
                .room
                .join(&claims.bot, token, conn.id(), Arc::clone(conn))
                .map_err(|_| err(ErrorCode::WorldFull, format!("world {:?} is full", claims.world)))?;
            if let Some(old) = seated.replaced {
                old.close(close::REPLACED, "the seat was taken by a newer connection");
            }
            if let Some(fence) = claims.fence {
                st.fence = st.fence.max(fence);
            }
            if st.joined.len() < MAX_JOINED_UNREPORTED {
                st.joined.push(claims.nonce.clone());
            }
            self.open_session(&cell, &mut st, seated.bot, &claims.bot);
            return Ok(self.welcome(&cell, &st, seated.bot, conn));
        }
        Err(err(ErrorCode::ServerFull, "world is being unloaded; retry"))
    }

    /// Load the world's saved state once, before its first bot takes a seat.
    async fn ensure_loaded(&self, cell: &Arc<RoomCell>, fence: u64) -> Result<(), ErrorMsg> {
        let Some(persist) = &self.persist else { return Ok(()) };
        let result = cell.loader.get_or_init(|| self.load_world(persist, cell, fence)).await;
        if let Err(e) = result {
            // Forget the cell: the next join tries again.
            cell.state.lock().closed = true;
            let mut rooms = self.rooms.lock();
            if rooms.get(&cell.world_id).is_some_and(|c| Arc::ptr_eq(c, cell)) {
                rooms.remove(&cell.world_id);
            }
            self.metrics.live_worlds.set(rooms.len() as i64);
            return Err(e.clone());
        }
        Ok(())
    }

    async fn load_world(&self, persist: &Persist, cell: &Arc<RoomCell>, fence: u64) -> Result<(), ErrorMsg> {
        let world = cell.world_id.as_ref();
        let unavailable = |e: String| {
            tracing::error!(world, error = %e, "cannot load the world's saved state");
            err(ErrorCode::Unavailable, "the world's saved state cannot be loaded right now; retry shortly")
        };
        let owned = persist.claim(world, fence).await.map_err(|e| unavailable(e.to_string()))?;
        if !owned {
            return Err(err(ErrorCode::TicketWrongServer, "the world was placed on another server; allocate again"));
        }
        let saved = persist.load(world).await.map_err(|e| unavailable(e.to_string()))?;
        let saved_fence = saved.as_ref().map_or(0, |(f, _)| *f);
        // A placement older than the newest snapshot is stale. Without an allocator (fence 0)
        // the server takes the snapshot's fence and carries on from it.
        if fence != 0 && saved_fence > fence {
            return Err(err(ErrorCode::TicketWrongServer, "the world was placed on another server; allocate again"));
        }
        let mut st = cell.state.lock();
        st.fence = st.fence.max(saved_fence);
        if let Some((_, saved)) = saved {
            let world_cfg = WorldConfig { tick_hz: self.cfg.tick_hz, ..self.cfg.world.clone() };
            let tick = saved.world.tick();
            tracing::info!(world, tick, bots = saved.seats.len(), "world restored from its snapshot");
            st.room = Room::restore(world_cfg, self.room_config, saved, || Self::new_resume_token(world));
            st.saved_hot = tick;
            st.saved_durable = tick;
        }
        st.fence = st.fence.max(fence);
        st.loaded = true;
        Ok(())
    }

    /// Start a session (activity log) for a bot that took a seat without one on this server.
    fn open_session(&self, cell: &RoomCell, st: &mut RoomState, bot: BotId, name: &str) {
        let Some(log) = self.persist.as_ref().and_then(|p| p.activity.as_ref()) else { return };
        if st.sessions.contains_key(&bot) {
            return;
        }
        let id = format!("{}:{}:{}", self.cfg.server_id, self.boot_ms, self.sessions.fetch_add(1, Ordering::Relaxed));
        st.sessions.insert(bot, id.clone());
        log.push(Record::SessionStart {
            id,
            bot: name.to_owned(),
            world: Arc::clone(&cell.world_id),
            at_ms: unix_now_ms(),
        });
    }

    /// End the sessions of `bots` (or of every seat when `None`).
    fn close_sessions(&self, st: &mut RoomState, bots: Option<&[BotId]>, at_ms: u64) {
        let Some(log) = self.persist.as_ref().and_then(|p| p.activity.as_ref()) else { return };
        let ended: Vec<String> = match bots {
            Some(ids) => ids.iter().filter_map(|b| st.sessions.remove(b)).collect(),
            None => st.sessions.drain().map(|(_, id)| id).collect(),
        };
        for id in ended {
            log.push(Record::SessionEnd { id, at_ms });
        }
    }

    /// Take back a kept seat with a resume token and send the welcome.
    pub fn resume(&self, token: &str, conn: &Arc<Conn>) -> Result<Joined, ErrorMsg> {
        if self.lifecycle() != Lifecycle::Ready {
            return Err(err(ErrorCode::Draining, "server is not taking players"));
        }
        let invalid = || err(ErrorCode::ResumeInvalid, "unknown resume token or seat already freed");
        let world = token.rsplit_once('.').map(|(w, _)| w).ok_or_else(invalid)?;
        let cell = self.rooms.lock().get(world).cloned().ok_or_else(invalid)?;
        let mut st = cell.state.lock();
        if st.closed {
            return Err(invalid());
        }
        let seated =
            st.room.resume(token, Self::new_resume_token(world), conn.id(), Arc::clone(conn)).map_err(|_| invalid())?;
        if let Some(old) = seated.replaced {
            old.close(close::REPLACED, "the seat was resumed by a newer connection");
        }
        let name = st.room.seat(seated.bot).map(|s| s.name.clone()).unwrap_or_default();
        self.open_session(&cell, &mut st, seated.bot, &name);
        Ok(self.welcome(&cell, &st, seated.bot, conn))
    }

    fn welcome(&self, cell: &Arc<RoomCell>, st: &RoomState, bot: BotId, conn: &Arc<Conn>) -> Joined {
        let welcome = st.room.welcome(bot, &cell.world_id, &cell.inbox.lock());
        let ack_seq = welcome.as_ref().map_or(0, |w| w.ack_seq);
        if let Some(w) = welcome {
            // Written under the room lock, so it precedes every update for this seat.
            conn.send_msg(&ServerMsg::Welcome(w));
        }
        Joined { cell: Arc::clone(cell), bot, ack_seq }
    }

    /// The cell of `world`, created (on the least busy shard) if it is not loaded.
    fn room_for(&self, world: &str) -> Result<Arc<RoomCell>, ErrorMsg> {
        let mut rooms = self.rooms.lock();
        if let Some(cell) = rooms.get(world) {
            return Ok(Arc::clone(cell));
        }
        if rooms.len() >= self.cfg.max_worlds {
            return Err(err(
                ErrorCode::ServerFull,
                format!("server holds its maximum of {} worlds", self.cfg.max_worlds),
            ));
        }
        let world_cfg = WorldConfig { tick_hz: self.cfg.tick_hz, ..self.cfg.world.clone() };
        let room = Room::new(World::new(world_cfg, seed_of(world)), self.room_config);
        let cell = Arc::new(RoomCell {
            world_id: Arc::from(world),
            inbox: Mutex::new(Vec::new()),
            inbox_cap: self.cfg.input_queue,
            state: Mutex::new(RoomState {
                room,
                loaded: self.persist.is_none(),
                closed: false,
                fence: 0,
                joined: Vec::new(),
                saved_hot: 0,
                saved_durable: 0,
                sessions: HashMap::new(),
            }),
            loader: tokio::sync::OnceCell::new(),
        });
        rooms.insert(Arc::clone(&cell.world_id), Arc::clone(&cell));
        self.metrics.live_worlds.set(rooms.len() as i64);
        let shard = self.shards.iter().min_by_key(|s| s.lock().len()).unwrap_or(&self.shards[0]);
        shard.lock().push(Arc::clone(&cell));
        tracing::debug!(world, "world loaded");
        Ok(cell)
    }

    /// Tick every world of shard `idx` once.
    pub fn tick_shard(&self, idx: usize, scratch: &mut TickScratch) {
        let started = Instant::now();
        let cells: Vec<Arc<RoomCell>> = self.shards[idx].lock().clone();
        let mut stats = TickStats::default();
        let mut unloaded: Vec<&Arc<RoomCell>> = Vec::new();
        let at_ms = unix_now_ms();
        for cell in &cells {
            if self.tick_room(cell, scratch, &mut stats, at_ms) {
                unloaded.push(cell);
            }
        }
        if !unloaded.is_empty() {
            // No room lock is taken under the shard lock (joins lock map, then shard).
            self.shards[idx].lock().retain(|c| !unloaded.iter().any(|u| Arc::ptr_eq(u, c)));
        }
        let m = &self.metrics;
        m.bytes_sent.inc_by(stats.bytes);
        m.frames_sent.inc_by(stats.frames);
        m.updates_due.inc_by(stats.due);
        m.updates_delivered.inc_by(stats.delivered);
        m.clients_resynced.inc_by(stats.resynced);
        m.input_queue.dec_by(stats.inputs);
        if stats.dropped > 0 {
            m.clients_dropped.get_or_create(&[("reason", "slow_consumer")]).inc_by(stats.dropped);
        }
        m.ticks.inc();
        let took = started.elapsed();
        m.tick_duration.observe(took.as_secs_f64());
        if took > self.cfg.tick_interval() {
            m.tick_overruns.inc();
        }
    }

    /// One tick of one world; true when the world was unloaded.
    fn tick_room(&self, cell: &RoomCell, scratch: &mut TickScratch, stats: &mut TickStats, at_ms: u64) -> bool {
        let mut guard = cell.state.lock();
        let st = &mut *guard;
        if st.closed {
            return true;
        }
        if !st.loaded {
            return false;
        }
        std::mem::swap(&mut *cell.inbox.lock(), &mut scratch.inputs);
        stats.inputs += scratch.inputs.len() as i64;
        st.room.run_tick(&scratch.inputs);
        scratch.inputs.clear();
        if let Some(log) = self.persist.as_ref().and_then(|p| p.activity.as_ref()) {
            let world = st.room.world();
            for r in records_of_tick(
                &cell.world_id,
                st.room.changes(),
                |id| world.bot(id).map(|b| b.name.clone()),
                at_ms,
                log,
            ) {
                log.push(r);
            }
            if !st.room.changes().removed.is_empty() {
                let removed = st.room.changes().removed.clone();
                self.close_sessions(st, Some(&removed), at_ms);
            }
        }

        let room = &st.room;
        let mut encoded = [false; 2];
        let mut ack = [0u8; 10];
        for (i, seat) in room.seats().iter().enumerate() {
            let Some(holder) = &seat.holder else { continue };
            let conn = &holder.conn;
            stats.due += 1;
            match room.lag_action(i, || conn.is_drained()) {
                LagAction::Update => {
                    let enc = conn.encoding();
                    let e = enc.index();
                    if !encoded[e] {
                        encode_frame(enc, room, scratch);
                        encoded[e] = true;
                    }
                    // Patch this client's ack into the shared frame: one contiguous write, no copy.
                    let ack = ack_bytes(enc, seat.ack_seq, &mut ack);
                    let at = scratch.ack_at[e];
                    scratch.frames[e][at..at + ack.len()].copy_from_slice(ack);
                    match conn.send(&[&scratch.frames[e]]) {
                        Delivery::Sent | Delivery::Queued => {
                            stats.delivered += 1;
                            stats.frames += 1;
                            stats.bytes += scratch.frames[e].len() as u64;
                        }
                        Delivery::Full => scratch.marks.push((i, SeatMark::Lagging)),
                        Delivery::Closed => {}
                    }
                }
                LagAction::Snapshot => {
                    conn.send_msg(&ServerMsg::Snapshot(room.snapshot_for(i)));
                    scratch.marks.push((i, SeatMark::Resynced));
                    stats.resynced += 1;
                    stats.delivered += 1;
                    stats.frames += 1;
                }
                LagAction::Skip => {}
                LagAction::Drop => {
                    conn.close(close::SLOW_CONSUMER, "too slow to take updates");
                    scratch.dropped.push((seat.bot, conn.id()));
                    stats.dropped += 1;
                }
            }
        }
        for (i, mark) in scratch.marks.drain(..) {
            match mark {
                SeatMark::Lagging => st.room.mark_lagging(i),
                SeatMark::Resynced => st.room.mark_resynced(i),
            }
        }
        for (bot, conn_id) in scratch.dropped.drain(..) {
            st.room.disconnect(bot, conn_id);
        }

        // With persistence, a world is unloaded only once a save covers it as it became empty.
        let saved_since_empty = match (&self.persist, st.room.empty_since()) {
            (None, _) => true,
            (Some(p), Some(since)) => {
                let saved = if p.pg.is_some() { st.saved_durable } else { st.saved_hot };
                saved >= since
            }
            (Some(_), None) => false,
        };
        if saved_since_empty && st.room.idle_ticks().is_some_and(|t| t >= self.idle_unload_ticks) {
            st.closed = true;
            let mut rooms = self.rooms.lock();
            rooms.remove(&cell.world_id);
            self.metrics.live_worlds.set(rooms.len() as i64);
            tracing::debug!(world = %cell.world_id, "world unloaded after being empty");
            return true;
        }
        false
    }

    /// Forget expired used tickets and refresh the seat gauges.
    pub fn housekeeping(&self) {
        let now_unix = unix_now();
        let used = {
            let mut used = self.used.lock();
            used.expiry.retain(|_, exp| *exp > now_unix);
            used.expiry.len()
        };
        self.metrics.used_tickets.set(used as i64);
        let cells: Vec<Arc<RoomCell>> = self.rooms.lock().values().cloned().collect();
        let (mut seats, mut connected) = (0, 0);
        for cell in cells {
            let st = cell.state.lock();
            seats += st.room.seats().len();
            connected += st.room.connected();
        }
        self.metrics.seats.set(seats as i64);
        self.metrics.connected_bots.set(connected as i64);
        if let Some(log) = self.persist.as_ref().and_then(|p| p.activity.as_ref()) {
            self.metrics.activity_queued.set(log.queued() as i64);
        }
    }

    /// What the registry should know of each live world; takes the joins since the last call.
    pub fn world_reports(&self) -> Vec<WorldReport> {
        let cells: Vec<Arc<RoomCell>> = self.rooms.lock().values().cloned().collect();
        cells
            .iter()
            .filter_map(|cell| {
                let mut st = cell.state.lock();
                (!st.closed).then(|| WorldReport {
                    world_id: cell.world_id.to_string(),
                    fence: st.fence,
                    occupancy: st.room.seats().len() as u32,
                    joined: std::mem::take(&mut st.joined),
                })
            })
            .collect()
    }

    /// Apply the registry's answer: learn fences, let go of worlds placed elsewhere.
    pub fn apply_heartbeat_reply(&self, reply: &HeartbeatReply) {
        for (world, fence) in &reply.fences {
            // Lock order is room state before the map: never hold the map while taking a room.
            let cell = self.rooms.lock().get(world.as_str()).cloned();
            if let Some(cell) = cell {
                let mut st = cell.state.lock();
                st.fence = st.fence.max(*fence);
            }
        }
        for world in &reply.evict {
            self.evict(world, "the world moved to another server");
        }
    }

    /// Unload `world` now: every client is closed with 4006 and its seats are dropped.
    pub fn evict(&self, world: &str, reason: &str) {
        let Some(cell) = self.rooms.lock().get(world).cloned() else { return };
        let mut st = cell.state.lock();
        if st.closed {
            return;
        }
        st.closed = true;
        for conn in st.room.evict_all() {
            conn.close(close::WORLD_MOVED, reason);
        }
        self.close_sessions(&mut st, None, unix_now_ms());
        let mut rooms = self.rooms.lock();
        if rooms.get(world).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            rooms.remove(world);
        }
        self.metrics.live_worlds.set(rooms.len() as i64);
        tracing::warn!(world, reason, "world evicted");
    }

    /// The fence this server holds for `world` (0: unknown or not loaded).
    pub fn fence_of(&self, world: &str) -> u64 {
        let cell = self.rooms.lock().get(world).cloned();
        cell.map_or(0, |c| c.state.lock().fence)
    }

    /// Encode the worlds to save: those whose tick moved since their last save to `store`
    /// (every loaded world when `all`).
    pub fn worlds_to_save(&self, store: Store, all: bool) -> Vec<Encoded> {
        let cells: Vec<Arc<RoomCell>> = self.rooms.lock().values().cloned().collect();
        let mut out = Vec::with_capacity(cells.len());
        for cell in cells {
            let (saved, fence) = {
                let st = cell.state.lock();
                let last = match store {
                    Store::Hot => st.saved_hot,
                    Store::Durable => st.saved_durable,
                };
                if st.closed || !st.loaded || (!all && st.room.tick() == last) {
                    continue;
                }
                (st.room.save(), st.fence)
            };
            match Encoded::new(&cell.world_id, fence, &saved) {
                Ok(e) => out.push(e),
                Err(error) => tracing::error!(world = %cell.world_id, %error, "could not encode a snapshot"),
            }
        }
        out
    }

    /// Note what a store accepted; let go of worlds it refused (a newer placement holds them).
    pub fn saved(&self, store: Store, batch: &[Encoded], refused: &[String]) {
        for e in batch {
            if refused.contains(&e.world) {
                continue;
            }
            let cell = self.rooms.lock().get(e.world.as_str()).cloned();
            if let Some(cell) = cell {
                let mut st = cell.state.lock();
                match store {
                    Store::Hot => st.saved_hot = st.saved_hot.max(e.tick),
                    Store::Durable => st.saved_durable = st.saved_durable.max(e.tick),
                }
            }
        }
        for world in refused {
            self.metrics.snapshots_refused.inc();
            // Only the copy that was refused: the world may have been placed here again since,
            // with a newer fence.
            let written_with = batch.iter().filter(|e| e.world == *world).map(|e| e.fence).max().unwrap_or(0);
            let cell = self.rooms.lock().get(world.as_str()).cloned();
            if cell.is_some_and(|c| c.state.lock().fence <= written_with) {
                self.evict(world, "a newer placement of the world exists");
            }
        }
    }

    /// End every open session (the server is going away; the bots continue elsewhere).
    pub fn close_all_sessions(&self) {
        let cells: Vec<Arc<RoomCell>> = self.rooms.lock().values().cloned().collect();
        let at = unix_now_ms();
        for cell in cells {
            let mut st = cell.state.lock();
            self.close_sessions(&mut st, None, at);
        }
    }

    pub fn persist(&self) -> Option<&Arc<Persist>> {
        self.persist.as_ref()
    }

    /// Begin draining: refuse new sessions and tell every connection to close with "going away".
    pub fn start_drain(&self) {
        self.set_lifecycle(Lifecycle::Draining);
        self.drain.send_replace(true);
    }

    /// Turns true when the server starts draining.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }
}

/// Encode this tick's update of `room` in `enc` into the shard's frame buffer for `enc`.
fn encode_frame(enc: Encoding, room: &Room<Arc<Conn>>, scratch: &mut TickScratch) {
    let e = enc.index();
    let changes = room.changes();
    scratch.msg_head.clear();
    scratch.msg_tail.clear();
    let result = encode_update(
        enc,
        room.tick(),
        &changes.changed,
        &changes.removed,
        &changes.events,
        &mut scratch.msg_head,
        &mut scratch.msg_tail,
    );
    if let Err(error) = result {
        tracing::error!(%error, "could not encode an update");
    }
    let ack = arena_sdk::codec::ack_len(enc);
    let len = scratch.msg_head.len() + ack + scratch.msg_tail.len();
    let frame = &mut scratch.frames[e];
    frame.clear();
    frame::write_header(frame::data_opcode(enc), len, frame);
    frame.extend_from_slice(&scratch.msg_head);
    scratch.ack_at[e] = frame.len();
    frame.resize(frame.len() + ack, 0);
    frame.extend_from_slice(&scratch.msg_tail);
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Where a snapshot goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Redis, every second.
    Hot,
    /// PostgreSQL, periodically and on drain.
    Durable,
}
