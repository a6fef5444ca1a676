//! The worlds of one process: the map from world id to its cell, the shards that tick them,
//! seating and resuming, suspension when the lease runs out, eviction, unloading.
//!
//! Each world lives in a [`RoomCell`]: an input queue that connection readers push to, and the
//! [`WorldState`] (the room and what the server knows about it) behind a lock taken by the
//! world's tick and, briefly, by joins. Worlds are spread over shards; a shard task ticks its
//! worlds in turn with [`tick_room`](crate::tick::tick_room).
//!
//! Lock order: a world's state, then the map, then a shard list — never the other way round.
//! Generic over the connection type `L`, so the simulation harness drives this same code.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arena_sdk::allocator_api::RefusedTicket;
use arena_sdk::protocol::{BotId, Command, ErrorCode, ErrorMsg, ServerMsg, Tick, close};
use arena_sdk::rng::seed_of;
use parking_lot::Mutex;

use crate::link::{Link, send_msg};
use crate::room::{QueuedInput, Room, RoomConfig, SavedRoom};
use crate::tick::{TickScratch, TickStats, tick_room};
use crate::world::{World, WorldConfig};

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorMsg {
    ErrorMsg { code, message: message.into() }
}

/// How the worlds of a process are kept.
#[derive(Debug, Clone)]
pub struct WorldsConfig {
    pub max_worlds: usize,
    pub shards: usize,
    /// Rules of each world.
    pub world: WorldConfig,
    pub room: RoomConfig,
    /// Inputs a world queues between two ticks.
    pub input_queue: usize,
    /// Ticks an empty world stays loaded.
    pub idle_unload_ticks: u64,
    /// A world's saved state must be loaded before it takes bots (persistence is on).
    pub load_first: bool,
    /// An empty world is unloaded only once a save covers it (persistence is on).
    pub save_before_unload: bool,
    /// How long a suspended world (its lease ran out) is kept for its placement to come back.
    pub suspend_keep: Duration,
}

/// What the allocator has not acknowledged yet about a world.
#[derive(Debug, Default, Clone)]
pub struct ReportState {
    /// Ticket nonces used to join.
    pub joined: Vec<String>,
    /// Tickets refused at join.
    pub refused: Vec<RefusedTicket>,
    /// The room's member version the allocator last acknowledged a bot list for.
    pub acked_members: Option<u64>,
    /// When a bot list was last acknowledged (monotonic).
    pub bots_sent_at: Option<Duration>,
}

/// Most unacknowledged joins and refusals a world remembers; beyond, reservations expire.
pub const MAX_UNREPORTED: usize = arena_sdk::allocator_api::MAX_JOINED_PER_REPORT;

/// One world and what the server knows about it.
#[derive(Debug)]
pub struct WorldState<L> {
    pub room: Room<L>,
    /// Its saved state (if any) was loaded: it may tick and take bots.
    pub loaded: bool,
    /// Unloaded or evicted: joins that still hold this cell must look again.
    pub closed: bool,
    /// Since when (monotonic) the world is suspended — the lease ran out: no ticks, no joins,
    /// seats kept — until its placement is confirmed again.
    pub suspended_since: Option<Duration>,
    /// The world's placement generation (fencing token); 0 unknown.
    pub fence: u64,
    /// The last tick saved to Redis and to PostgreSQL.
    pub saved_hot: Tick,
    pub saved_durable: Tick,
    /// Open activity-log sessions by bot.
    pub sessions: HashMap<BotId, String>,
    pub report: ReportState,
}

impl<L> WorldState<L> {
    /// The newest tick saved to the store that unloading waits for.
    pub fn saved(&self, durable: bool) -> Tick {
        if durable { self.saved_durable } else { self.saved_hot }
    }
}

/// One world: its input queue and its state.
#[derive(Debug)]
pub struct RoomCell<L> {
    world_id: Arc<str>,
    shard: usize,
    inbox: Mutex<Vec<QueuedInput>>,
    inbox_cap: usize,
    pub state: Mutex<WorldState<L>>,
    /// Loading its saved state happens once, by the first join; later joins wait for it.
    pub loader: tokio::sync::OnceCell<Result<(), ErrorMsg>>,
}

/// The world's input queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl<L: Link> RoomCell<L> {
    pub fn world_id(&self) -> &Arc<str> {
        &self.world_id
    }

    /// Queue an input for the next tick.
    pub fn push_input(&self, bot: BotId, seq: u32, command: Command) -> Result<(), Busy> {
        let mut inbox = self.inbox.lock();
        if inbox.len() >= self.inbox_cap {
            return Err(Busy);
        }
        inbox.push(QueuedInput { bot, seq, command });
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

    /// Inputs waiting for the next tick.
    pub fn queued_inputs(&self) -> usize {
        self.inbox.lock().len()
    }
}

/// A seat taken by a connection.
#[derive(Debug)]
pub struct Joined<L> {
    pub cell: Arc<RoomCell<L>>,
    pub bot: BotId,
    pub ack_seq: u32,
}

impl<L> Clone for Joined<L> {
    fn clone(&self) -> Self {
        Joined { cell: Arc::clone(&self.cell), bot: self.bot, ack_seq: self.ack_seq }
    }
}

/// Side effects of ticking and unloading that the host wants (the activity log); the
/// simulation harness passes [`NoHooks`].
pub trait TickHooks<L> {
    /// A world ticked: its changes are in `state.room.changes()`.
    fn ticked(&mut self, world: &Arc<str>, state: &mut WorldState<L>);
    /// A world is going away (unloaded, evicted or discarded).
    fn unloading(&mut self, world: &Arc<str>, state: &mut WorldState<L>);
}

/// Hooks that do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl<L> TickHooks<L> for NoHooks {
    fn ticked(&mut self, _: &Arc<str>, _: &mut WorldState<L>) {}
    fn unloading(&mut self, _: &Arc<str>, _: &mut WorldState<L>) {}
}

/// What one shard tick did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShardTick {
    pub stats: TickStats,
    /// Worlds unloaded (empty long enough, or suspended too long).
    pub unloaded: usize,
    /// Worlds suspended by this tick because the lease ran out.
    pub suspended: usize,
}

#[derive(Debug)]
pub struct Worlds<L> {
    cfg: WorldsConfig,
    map: Mutex<HashMap<Arc<str>, Arc<RoomCell<L>>>>,
    shards: Vec<Mutex<Vec<Arc<RoomCell<L>>>>>,
}

impl<L: Link> Worlds<L> {
    pub fn new(cfg: WorldsConfig) -> Self {
        let shards = (0..cfg.shards.max(1)).map(|_| Mutex::new(Vec::new())).collect();
        Worlds { cfg, map: Mutex::new(HashMap::new()), shards }
    }

    pub fn config(&self) -> &WorldsConfig {
        &self.cfg
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Worlds loaded now.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.lock().is_empty()
    }

    pub fn get(&self, world: &str) -> Option<Arc<RoomCell<L>>> {
        self.map.lock().get(world).cloned()
    }

    /// Every world's cell.
    pub fn cells(&self) -> Vec<Arc<RoomCell<L>>> {
        self.map.lock().values().cloned().collect()
    }

    /// The cell of `world`, created (on the least busy shard, not loaded yet) if need be.
    pub fn get_or_create(&self, world: &str) -> Result<Arc<RoomCell<L>>, ErrorMsg> {
        let mut map = self.map.lock();
        if let Some(cell) = map.get(world) {
            return Ok(Arc::clone(cell));
        }
        if map.len() >= self.cfg.max_worlds {
            return Err(err(
                ErrorCode::ServerFull,
                format!("server holds its maximum of {} worlds", self.cfg.max_worlds),
            ));
        }
        let room = Room::new(World::new(self.cfg.world.clone(), seed_of(world)), self.cfg.room);
        let (shard, _) =
            self.shards.iter().enumerate().min_by_key(|(_, s)| s.lock().len()).unwrap_or((0, &self.shards[0]));
        let cell = Arc::new(RoomCell {
            world_id: Arc::from(world),
            shard,
            inbox: Mutex::new(Vec::new()),
            inbox_cap: self.cfg.input_queue,
            state: Mutex::new(WorldState {
                room,
                loaded: !self.cfg.load_first,
                closed: false,
                suspended_since: None,
                fence: 0,
                saved_hot: 0,
                saved_durable: 0,
                sessions: HashMap::new(),
                report: ReportState::default(),
            }),
            loader: tokio::sync::OnceCell::new(),
        });
        map.insert(Arc::clone(&cell.world_id), Arc::clone(&cell));
        self.shards[shard].lock().push(Arc::clone(&cell));
        tracing::debug!(world, shard, "world created");
        Ok(cell)
    }

    /// Continue the world in `cell` from a saved state (its seats are kept for their bots).
    pub fn restore(&self, state: &mut WorldState<L>, world: &str, saved: SavedRoom) {
        let tick = saved.world.tick();
        state.room = Room::restore(self.cfg.world.clone(), self.cfg.room, saved, || new_resume_token(world));
        state.saved_hot = tick;
        state.saved_durable = tick;
    }

    /// Forget `cell` (after it was marked closed).
    pub fn remove(&self, cell: &Arc<RoomCell<L>>) {
        let mut map = self.map.lock();
        if map.get(&cell.world_id).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            map.remove(&cell.world_id);
        }
        drop(map);
        self.shards[cell.shard].lock().retain(|c| !Arc::ptr_eq(c, cell));
    }

    /// Seat `bot_name` in the loaded world of `cell` with `link`, and send the welcome (under the
    /// world's lock, so it precedes every update). A bot that holds a seat there takes it back
    /// and its older connection is closed with 4005.
    pub fn seat(&self, cell: &Arc<RoomCell<L>>, bot_name: &str, link: &L) -> Result<Joined<L>, ErrorMsg> {
        let mut st = cell.state.lock();
        check_servable(&st, &cell.world_id)?;
        let seated = st
            .room
            .join(bot_name, new_resume_token(&cell.world_id), link.id(), link.clone())
            .map_err(|_| err(ErrorCode::WorldFull, format!("world {:?} is full", &*cell.world_id)))?;
        if let Some(old) = seated.replaced {
            old.close(close::REPLACED, "the seat was taken by a newer connection");
        }
        Ok(welcome(cell, &st, seated.bot, link))
    }

    /// Take back a kept seat with a resume token and send the welcome.
    pub fn resume(&self, token: &str, link: &L) -> Result<Joined<L>, ErrorMsg> {
        let invalid = || err(ErrorCode::ResumeInvalid, "unknown resume token or seat already freed");
        let world = token.rsplit_once('.').map(|(w, _)| w).ok_or_else(invalid)?;
        let cell = self.get(world).ok_or_else(invalid)?;
        let mut st = cell.state.lock();
        if st.closed {
            return Err(invalid());
        }
        check_servable(&st, &cell.world_id)?;
        let seated = st.room.resume(token, new_resume_token(world), link.id(), link.clone()).map_err(|_| invalid())?;
        if let Some(old) = seated.replaced {
            old.close(close::REPLACED, "the seat was resumed by a newer connection");
        }
        Ok(welcome(&cell, &st, seated.bot, link))
    }

    /// Tick every world of shard `idx` once. With `lease_valid` false, worlds still served are
    /// suspended first: their clients are closed with 4007, their seats kept.
    pub fn tick_shard(
        &self,
        idx: usize,
        now: Duration,
        lease_valid: bool,
        scratch: &mut TickScratch,
        hooks: &mut impl TickHooks<L>,
    ) -> ShardTick {
        let cells: Vec<Arc<RoomCell<L>>> = self.shards[idx].lock().clone();
        let mut out = ShardTick::default();
        let mut gone: Vec<Arc<RoomCell<L>>> = Vec::new();
        for cell in &cells {
            let mut guard = cell.state.lock();
            let st = &mut *guard;
            if st.closed {
                gone.push(Arc::clone(cell));
                continue;
            }
            if !st.loaded {
                continue;
            }
            if !lease_valid && st.suspended_since.is_none() {
                suspend(st, now);
                out.suspended += 1;
            }
            if let Some(since) = st.suspended_since {
                let saved = !self.cfg.save_before_unload
                    || st.saved(true) >= st.room.tick()
                    || st.saved(false) >= st.room.tick();
                if now.saturating_sub(since) >= self.cfg.suspend_keep && saved {
                    hooks.unloading(&cell.world_id, st);
                    st.closed = true;
                    gone.push(Arc::clone(cell));
                    out.unloaded += 1;
                    tracing::info!(world = %cell.world_id, "suspended world let go: its placement did not come back");
                }
                continue;
            }
            // The inbox and the scratch buffer trade places: no allocation per tick.
            let mut inputs = std::mem::take(&mut scratch.inputs);
            std::mem::swap(&mut *cell.inbox.lock(), &mut inputs);
            tick_room(&mut st.room, &inputs, scratch, &mut out.stats);
            inputs.clear();
            scratch.inputs = inputs;
            hooks.ticked(&cell.world_id, st);
            if self.idle_enough(st) {
                hooks.unloading(&cell.world_id, st);
                st.closed = true;
                gone.push(Arc::clone(cell));
                out.unloaded += 1;
                tracing::debug!(world = %cell.world_id, "world unloaded after being empty");
            }
        }
        for cell in &gone {
            self.remove(cell);
        }
        out
    }

    /// Empty for long enough, and (with persistence) saved since it became empty.
    fn idle_enough(&self, st: &WorldState<L>) -> bool {
        let Some(idle) = st.room.idle_ticks() else { return false };
        if idle < self.cfg.idle_unload_ticks {
            return false;
        }
        !self.cfg.save_before_unload
            || st.room.empty_since().is_some_and(|since| st.saved_durable.max(st.saved_hot) >= since)
    }

    /// Unload `world` now: every client is closed with `code`, its seats are dropped.
    pub fn evict(&self, world: &str, code: u16, reason: &str, hooks: &mut impl TickHooks<L>) -> bool {
        let Some(cell) = self.get(world) else { return false };
        let mut st = cell.state.lock();
        if st.closed {
            return false;
        }
        st.closed = true;
        for conn in st.room.evict_all() {
            conn.close(code, reason);
        }
        hooks.unloading(&cell.world_id, &mut st);
        drop(st);
        self.remove(&cell);
        tracing::warn!(world, reason, "world evicted");
        true
    }

    /// The placement of `world` was confirmed with `fence`: serve it again if it was suspended.
    pub fn confirm(&self, world: &str, fence: u64) {
        if let Some(cell) = self.get(world) {
            let mut st = cell.state.lock();
            st.fence = st.fence.max(fence);
            if st.suspended_since.take().is_some() {
                tracing::info!(world, "placement confirmed again: the world is served again");
            }
        }
    }

    /// Detach every client of every world (the server is draining; the seats stay in the saved
    /// state for the bots to take back elsewhere); returns how many were closed.
    pub fn close_all(&self, code: u16, reason: &str) -> usize {
        let mut n = 0;
        for cell in self.cells() {
            for conn in cell.state.lock().room.detach_all() {
                conn.close(code, reason);
                n += 1;
            }
        }
        n
    }
}

/// The lease ran out: close every client of the world with 4007 and keep the seats.
fn suspend<L: Link>(st: &mut WorldState<L>, now: Duration) {
    st.suspended_since = Some(now);
    for conn in st.room.detach_all() {
        conn.close(close::LEASE_LOST, "this server lost contact with the allocator; allocate again");
    }
}

fn check_servable<L>(st: &WorldState<L>, world: &str) -> Result<(), ErrorMsg> {
    if st.closed {
        return Err(err(ErrorCode::Unavailable, format!("world {world:?} is being unloaded; retry")));
    }
    if !st.loaded {
        return Err(err(ErrorCode::Unavailable, format!("world {world:?} is not loaded yet; retry")));
    }
    if st.suspended_since.is_some() {
        return Err(err(
            ErrorCode::Unavailable,
            format!(
                "world {world:?} is not served here right now (this server lost contact with the allocator); allocate again"
            ),
        ));
    }
    Ok(())
}

fn welcome<L: Link>(cell: &Arc<RoomCell<L>>, st: &WorldState<L>, bot: BotId, link: &L) -> Joined<L> {
    let welcome = st.room.welcome(bot, &cell.world_id, &cell.inbox.lock());
    let ack_seq = welcome.as_ref().map_or(0, |w| w.ack_seq);
    if let Some(w) = welcome {
        send_msg(link, &ServerMsg::Welcome(w));
    }
    Joined { cell: Arc::clone(cell), bot, ack_seq }
}

/// A resume token for a seat in `world`: the world id, a dot, and 128 random bits.
pub fn new_resume_token(world: &str) -> String {
    format!("{world}.{}", arena_sdk::ticket::new_nonce())
}
