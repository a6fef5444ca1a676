//! A world and its seats, without I/O.
//!
//! A seat is a bot's place in a world. It is held by one connection at a time; when that
//! connection drops without a goodbye the seat is kept for a grace period so the bot can resume
//! with its token. The room decides who is seated, which inputs apply, when kept seats expire and
//! what a lagging client receives; the I/O layer only carries its decisions out. `C` is the
//! connection handle the I/O layer wants back when it must write to or close a connection.
//!
//! The room also keeps the events of its recent ticks (a bounded history), so that a client that
//! gets a `snapshot` instead of the updates it missed still learns every chat line and action of
//! those ticks.

use std::collections::VecDeque;

use arena_sdk::protocol::{BotId, Command, Event, Snapshot, Tick, Welcome};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::world::{Changes, SavedWorld, World, WorldConfig, WorldFull};

/// A room as it is saved: the world and who holds its seats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedRoom {
    pub world: SavedWorld,
    pub seats: Vec<SavedSeat>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSeat {
    pub bot: BotId,
    pub name: String,
    pub ack_seq: u32,
}

/// Timing rules of a room, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomConfig {
    /// How long a dropped bot keeps its seat.
    pub grace_ticks: u64,
    /// How long a client may stay unable to take updates before it is disconnected.
    pub slow_client_ticks: u64,
}

/// Most events a room keeps for clients that get a snapshot instead of updates.
pub const MAX_HISTORY_EVENTS: usize = 2_048;

/// An input waiting for the next tick.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedInput {
    pub bot: BotId,
    pub seq: u32,
    pub command: Command,
}

/// The connection currently holding a seat.
#[derive(Debug, Clone)]
pub struct Holder<C> {
    pub id: u64,
    pub conn: C,
}

#[derive(Debug, Clone)]
pub struct Seat<C> {
    pub bot: BotId,
    pub name: String,
    token: String,
    /// The last input seq applied for this seat.
    pub ack_seq: u32,
    pub holder: Option<Holder<C>>,
    disconnected_at: Option<Tick>,
    /// The client needs a snapshot before further updates.
    needs_resync: bool,
    /// Since when the client has been unable to take updates.
    lagging_since: Option<Tick>,
    /// The tick of the last welcome, update or snapshot handed to the client.
    delivered: Tick,
}

/// What to do for a lagging seat this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagAction {
    /// Not lagging: send the update.
    Update,
    /// Its queue has drained: send a snapshot instead of the update.
    Snapshot,
    /// Still backed up: send nothing.
    Skip,
    /// Backed up for too long: disconnect it.
    Drop,
}

/// The resume token is unknown here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown resume token")]
pub struct UnknownToken;

/// A successful join or resume.
#[derive(Debug)]
pub struct Seated<C> {
    pub bot: BotId,
    /// The connection that held the seat before, to be closed as replaced.
    pub replaced: Option<C>,
}

/// The events of recent ticks, oldest first.
#[derive(Debug, Default)]
struct History {
    ticks: VecDeque<(Tick, Vec<Event>)>,
    events: usize,
    /// Events of ticks before this one may have been dropped.
    complete_from: Tick,
}

impl History {
    /// Add the events of `tick`; forget those older than `keep_ticks`, those past the event
    /// budget, and those of ticks up to `delivered_to`, which every connected client has been
    /// handed (in the steady state, only the last tick is kept).
    fn push(&mut self, tick: Tick, events: &[Event], keep_ticks: u64, delivered_to: Tick) {
        if !events.is_empty() {
            self.events += events.len();
            self.ticks.push_back((tick, events.to_vec()));
        }
        while let Some((t, n)) = self.ticks.front().map(|(t, e)| (*t, e.len())) {
            let too_old = t + keep_ticks < tick;
            if !too_old && t > delivered_to && self.events <= MAX_HISTORY_EVENTS {
                break;
            }
            // Nobody can ask for a tick at or before `delivered_to`; `since` stays exact.
            self.complete_from = self.complete_from.max(t + 1);
            self.events -= n;
            self.ticks.pop_front();
        }
    }

    /// Events of the ticks after `after`, and whether some of them were dropped.
    fn since(&self, after: Tick) -> (Vec<Event>, bool) {
        let events = self.ticks.iter().filter(|(t, _)| *t > after).flat_map(|(_, e)| e.iter().cloned()).collect();
        (events, after + 1 < self.complete_from)
    }
}

#[derive(Debug)]
pub struct Room<C> {
    world: World,
    config: RoomConfig,
    seats: Vec<Seat<C>>,
    changes: Changes,
    /// The tick at which the room last became empty (creation counts).
    empty_since: Option<Tick>,
    history: History,
    /// Grows whenever a seat is taken or freed: who holds seats changed.
    members: u64,
}

impl<C> Room<C> {
    pub fn new(world: World, config: RoomConfig) -> Self {
        let empty_since = Some(world.tick());
        let history = History { complete_from: world.tick(), ..History::default() };
        Room { world, config, seats: Vec::new(), changes: Changes::default(), empty_since, history, members: 0 }
    }

    /// The state to save.
    pub fn save(&self) -> SavedRoom {
        SavedRoom {
            world: self.world.save(),
            seats: self
                .seats
                .iter()
                .map(|s| SavedSeat { bot: s.bot, name: s.name.clone(), ack_seq: s.ack_seq })
                .collect(),
        }
    }

    /// A room continuing from `saved` (on this server or another). Every seat starts as dropped:
    /// its bot keeps its place for the grace period, and joining again (or resuming with a
    /// token from `token`) takes it back.
    pub fn restore(config: WorldConfig, room: RoomConfig, saved: SavedRoom, mut token: impl FnMut() -> String) -> Self {
        let world = World::restore(config, saved.world);
        let tick = world.tick();
        let seats: Vec<Seat<C>> = saved
            .seats
            .into_iter()
            .filter(|s| world.bot(s.bot).is_some())
            .map(|s| Seat {
                bot: s.bot,
                name: s.name,
                token: token(),
                ack_seq: s.ack_seq,
                holder: None,
                disconnected_at: Some(tick),
                needs_resync: false,
                lagging_since: None,
                delivered: tick,
            })
            .collect();
        let empty_since = seats.is_empty().then_some(tick);
        let history = History { complete_from: tick + 1, ..History::default() };
        // Restored seats are news to whoever keeps track of them.
        Room { world, config: room, seats, changes: Changes::default(), empty_since, history, members: 1 }
    }

    pub fn world(&self) -> &World {
        &self.world
    }
    pub fn tick(&self) -> Tick {
        self.world.tick()
    }
    pub fn seats(&self) -> &[Seat<C>] {
        &self.seats
    }
    pub fn seats_mut(&mut self) -> &mut [Seat<C>] {
        &mut self.seats
    }
    /// What the last tick changed.
    pub fn changes(&self) -> &Changes {
        &self.changes
    }
    /// Seats held by a live connection.
    pub fn connected(&self) -> usize {
        self.seats.iter().filter(|s| s.holder.is_some()).count()
    }
    /// Ticks the room has been without any seat, if it is empty.
    pub fn idle_ticks(&self) -> Option<u64> {
        self.empty_since.map(|t| self.world.tick() - t)
    }

    /// The tick at which the room last became empty, if it is.
    pub fn empty_since(&self) -> Option<Tick> {
        self.empty_since
    }

    /// A counter that grows whenever a seat is taken or freed.
    pub fn members_version(&self) -> u64 {
        self.members
    }

    fn seat_index(&self, bot: BotId) -> Option<usize> {
        self.seats.iter().position(|s| s.bot == bot)
    }

    pub fn seat(&self, bot: BotId) -> Option<&Seat<C>> {
        self.seat_index(bot).map(|i| &self.seats[i])
    }

    /// Seat `name` with a valid ticket. A bot that already has a seat here gets it back (the
    /// previous connection is returned to be closed), so one bot never holds two seats.
    pub fn join(&mut self, name: &str, token: String, conn_id: u64, conn: C) -> Result<Seated<C>, WorldFull> {
        if let Some(i) = self.seats.iter().position(|s| s.name == name) {
            return Ok(self.reattach(i, token, conn_id, conn));
        }
        let bot = self.world.add_bot(name)?;
        self.seats.push(Seat {
            bot,
            name: name.to_owned(),
            token,
            ack_seq: 0,
            holder: Some(Holder { id: conn_id, conn }),
            disconnected_at: None,
            needs_resync: false,
            lagging_since: None,
            delivered: self.world.tick(),
        });
        self.empty_since = None;
        self.members += 1;
        Ok(Seated { bot, replaced: None })
    }

    /// Whether `name` holds a seat here (connected or within its grace).
    pub fn has_seat(&self, name: &str) -> bool {
        self.seats.iter().any(|s| s.name == name)
    }

    /// Take a seat back with its resume token; `new_token` replaces the old one.
    pub fn resume(&mut self, token: &str, new_token: String, conn_id: u64, conn: C) -> Result<Seated<C>, UnknownToken> {
        // Every token is compared in full, so timing does not tell how close a guess came.
        let found = self.seats.iter().enumerate().fold(None, |found, (i, s)| {
            if bool::from(s.token.as_bytes().ct_eq(token.as_bytes())) { Some(i) } else { found }
        });
        let i = found.ok_or(UnknownToken)?;
        Ok(self.reattach(i, new_token, conn_id, conn))
    }

    fn reattach(&mut self, i: usize, token: String, conn_id: u64, conn: C) -> Seated<C> {
        let tick = self.world.tick();
        let seat = &mut self.seats[i];
        let replaced = seat.holder.replace(Holder { id: conn_id, conn }).map(|h| h.conn);
        seat.token = token;
        seat.disconnected_at = None;
        // The welcome carries a fresh snapshot.
        seat.needs_resync = false;
        seat.lagging_since = None;
        seat.delivered = tick;
        Seated { bot: seat.bot, replaced }
    }

    /// Connection `conn_id` dropped without leaving: keep the seat for the grace period.
    pub fn disconnect(&mut self, bot: BotId, conn_id: u64) -> bool {
        let tick = self.world.tick();
        match self.seat_index(bot) {
            Some(i) if self.seats[i].holder.as_ref().is_some_and(|h| h.id == conn_id) => {
                self.seats[i].holder = None;
                self.seats[i].disconnected_at = Some(tick);
                true
            }
            _ => false,
        }
    }

    /// Connection `conn_id` left: free the seat now.
    pub fn leave(&mut self, bot: BotId, conn_id: u64) -> bool {
        match self.seat_index(bot) {
            Some(i) if self.seats[i].holder.as_ref().is_some_and(|h| h.id == conn_id) => {
                self.free(i);
                true
            }
            _ => false,
        }
    }

    fn free(&mut self, i: usize) {
        let seat = self.seats.remove(i);
        self.members += 1;
        self.world.remove_bot(seat.bot);
        if self.seats.is_empty() {
            self.empty_since = Some(self.world.tick());
        }
    }

    /// Detach every connection but keep the seats, as if each had dropped now: the bots take
    /// them back (through a new join or a resume) once the world is served again. Returns the
    /// connections, to be closed.
    pub fn detach_all(&mut self) -> Vec<C> {
        let tick = self.world.tick();
        let mut conns = Vec::new();
        for seat in &mut self.seats {
            if let Some(h) = seat.holder.take() {
                conns.push(h.conn);
                seat.disconnected_at = Some(tick);
            }
        }
        conns
    }

    /// Bot names holding seats, in seat order.
    pub fn seated_names(&self) -> impl Iterator<Item = &str> {
        self.seats.iter().map(|s| s.name.as_str())
    }

    /// Remove every seat (the server is going away); returns the connections that held them.
    pub fn evict_all(&mut self) -> Vec<C> {
        let mut conns = Vec::new();
        while let Some(i) = self.seats.len().checked_sub(1) {
            if let Some(h) = self.seats[i].holder.take() {
                conns.push(h.conn);
            }
            self.free(i);
        }
        conns
    }

    /// The client of `bot` asked for a fresh snapshot.
    pub fn request_resync(&mut self, bot: BotId) {
        if let Some(i) = self.seat_index(bot) {
            self.seats[i].needs_resync = true;
        }
    }

    /// Run one tick: apply `inputs` in arrival order, step the world, free seats whose grace
    /// ran out, and collect the changes ([`Room::changes`]).
    pub fn run_tick(&mut self, inputs: &[QueuedInput]) {
        for input in inputs {
            if let Some(i) = self.seat_index(input.bot) {
                self.world.apply(input.bot, &input.command);
                let seat = &mut self.seats[i];
                seat.ack_seq = seat.ack_seq.max(input.seq);
            }
        }
        self.world.step();
        let now = self.world.tick();
        let grace = self.config.grace_ticks;
        while let Some(i) = self.seats.iter().position(|s| s.disconnected_at.is_some_and(|t| now >= t + grace)) {
            self.free(i);
        }
        self.world.take_update(&mut self.changes);
        let delivered_to =
            self.seats.iter().filter(|s| s.disconnected_at.is_none()).map(|s| s.delivered).min().unwrap_or(now);
        self.history.push(now, &self.changes.events, self.config.slow_client_ticks + 1, delivered_to);
    }

    /// Decide what seat `i`'s client gets this tick; `queue_empty` tells (only when asked)
    /// whether its outbound queue has drained.
    pub fn lag_action(&self, i: usize, queue_empty: impl FnOnce() -> bool) -> LagAction {
        let seat = &self.seats[i];
        if !seat.needs_resync {
            return LagAction::Update;
        }
        if queue_empty() {
            return LagAction::Snapshot;
        }
        match seat.lagging_since {
            Some(t) if self.world.tick() >= t + self.config.slow_client_ticks => LagAction::Drop,
            _ => LagAction::Skip,
        }
    }

    /// Seat `i`'s client could not take an update: it will get a snapshot once it drains.
    pub fn mark_lagging(&mut self, i: usize) {
        let tick = self.world.tick();
        let seat = &mut self.seats[i];
        seat.needs_resync = true;
        seat.lagging_since.get_or_insert(tick);
    }

    /// Seat `i`'s client was sent a snapshot.
    pub fn mark_resynced(&mut self, i: usize) {
        let tick = self.world.tick();
        let seat = &mut self.seats[i];
        seat.needs_resync = false;
        seat.lagging_since = None;
        seat.delivered = tick;
    }

    /// Seat `i`'s client was handed this tick's update.
    pub fn mark_delivered(&mut self, i: usize) {
        self.seats[i].delivered = self.world.tick();
    }

    /// The `welcome` for the seat of `bot`. Its `ack_seq` counts inputs still `queued` for the
    /// next tick too (received before a drop), so a resumed client numbers its inputs after them.
    pub fn welcome(&self, bot: BotId, world_id: &str, queued: &[QueuedInput]) -> Option<Welcome> {
        let seat = self.seat(bot)?;
        let ack_seq = queued.iter().filter(|q| q.bot == bot).map(|q| q.seq).fold(seat.ack_seq, u32::max);
        let hz = self.world.config().tick_hz;
        Some(Welcome {
            bot,
            world: world_id.to_owned(),
            tick: self.world.tick(),
            tick_hz: hz,
            ack_seq,
            resume_token: seat.token.clone(),
            resume_grace_ms: self.config.grace_ticks * 1000 / u64::from(hz.max(1)),
            snapshot: self.world.snapshot(),
        })
    }

    /// A resync `snapshot` for seat `i`, with the events of every tick since the last update
    /// its client was handed.
    pub fn snapshot_for(&self, i: usize) -> Snapshot {
        let seat = &self.seats[i];
        let (events, events_truncated) = self.history.since(seat.delivered);
        Snapshot {
            tick: self.world.tick(),
            ack_seq: seat.ack_seq,
            snapshot: self.world.snapshot(),
            events,
            events_truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::WorldConfig;
    use arena_sdk::protocol::{Event, Move};

    fn room(capacity: usize) -> Room<&'static str> {
        let world = World::new(WorldConfig { capacity, ..WorldConfig::default() }, 1);
        Room::new(world, RoomConfig { grace_ticks: 10, slow_client_ticks: 5 })
    }

    #[test]
    fn join_is_bounded_and_rejoin_reuses_the_seat() {
        let mut r = room(2);
        let a = r.join("a", "ta".into(), 1, "c1").unwrap();
        assert!(a.replaced.is_none());
        r.join("b", "tb".into(), 2, "c2").unwrap();
        assert_eq!(r.join("c", "tc".into(), 3, "c3").unwrap_err(), WorldFull);
        let again = r.join("a", "ta2".into(), 4, "c4").unwrap();
        assert_eq!((again.bot, again.replaced), (a.bot, Some("c1")));
        assert_eq!(r.world().len(), 2);
    }

    #[test]
    fn dropped_seat_is_kept_for_grace_then_freed() {
        let mut r = room(30);
        let bot = r.join("a", "tok".into(), 1, "c1").unwrap().bot;
        assert!(!r.disconnect(bot, 99), "only the holder can drop the seat");
        assert!(r.disconnect(bot, 1));
        for _ in 0..9 {
            r.run_tick(&[]);
        }
        assert!(r.seat(bot).is_some());
        let back = r.resume("tok", "tok2".into(), 2, "c2").unwrap();
        assert_eq!(back.bot, bot);
        assert!(back.replaced.is_none());
        assert_eq!(r.resume("tok", "x".into(), 3, "c3").unwrap_err(), UnknownToken, "tokens rotate");
        r.disconnect(bot, 2);
        for _ in 0..10 {
            r.run_tick(&[]);
        }
        assert!(r.seat(bot).is_none());
        assert!(r.changes().events.contains(&Event::Left { bot }));
        assert_eq!(r.idle_ticks(), Some(0));
    }

    #[test]
    fn leave_frees_at_once_and_inputs_ack() {
        let mut r = room(30);
        let bot = r.join("a", "t".into(), 1, "c").unwrap().bot;
        let mv = Command::Move(Move::To([1.0, 1.0]));
        r.run_tick(&[QueuedInput { bot, seq: 3, command: mv.clone() }, QueuedInput { bot, seq: 4, command: mv }]);
        assert_eq!(r.seat(bot).unwrap().ack_seq, 4);
        assert!(!r.leave(bot, 2));
        assert!(r.leave(bot, 1));
        assert!(r.world().is_empty());
        // Inputs of a bot that left are ignored.
        r.run_tick(&[QueuedInput { bot, seq: 5, command: Command::Say("late".into()) }]);
        assert_eq!(r.changes().events, vec![Event::Left { bot }], "the leave is told, the late chat is not");
    }

    #[test]
    fn lagging_client_gets_a_snapshot_or_is_dropped() {
        let mut r = room(30);
        r.join("a", "t".into(), 1, "c").unwrap();
        assert_eq!(r.lag_action(0, || false), LagAction::Update);
        r.mark_lagging(0);
        assert_eq!(r.lag_action(0, || false), LagAction::Skip);
        assert_eq!(r.lag_action(0, || true), LagAction::Snapshot);
        for _ in 0..5 {
            r.run_tick(&[]);
        }
        assert_eq!(r.lag_action(0, || false), LagAction::Drop);
        r.mark_resynced(0);
        assert_eq!(r.lag_action(0, || false), LagAction::Update);
        r.request_resync(r.seats()[0].bot);
        assert_eq!(r.lag_action(0, || true), LagAction::Snapshot);
    }

    #[test]
    fn restored_rooms_keep_seats_for_their_bots() {
        let mut r = room(30);
        let a = r.join("a", "t".into(), 1, "c").unwrap().bot;
        r.run_tick(&[QueuedInput { bot: a, seq: 7, command: Command::Move(Move::To([3.0, 4.0])) }]);
        let saved = r.save();
        let bytes = rmp_serde::to_vec(&saved).unwrap();
        let mut n = 0;
        let mut back: Room<&str> =
            Room::restore(r.world().config().clone(), r.config, rmp_serde::from_slice(&bytes).unwrap(), || {
                n += 1;
                format!("new{n}")
            });
        assert_eq!(back.world().snapshot(), r.world().snapshot());
        assert_eq!(back.seat(a).unwrap().ack_seq, 7);
        assert!(back.seat(a).unwrap().holder.is_none(), "nobody is connected yet");
        // The bot joins again (fresh ticket, new server): same seat, same state.
        let again = back.join("a", "t2".into(), 9, "c9").unwrap();
        assert_eq!(again.bot, a);
        assert_eq!(back.world().len(), 1);
        // Unclaimed seats expire after the grace.
        let mut lonely: Room<&str> = Room::restore(r.world().config().clone(), r.config, r.save(), || "x".into());
        for _ in 0..10 {
            lonely.run_tick(&[]);
        }
        assert!(lonely.world().is_empty());
    }

    #[test]
    fn a_snapshot_carries_the_events_it_replaces() {
        let mut r = room(30);
        let a = r.join("a", "t".into(), 1, "c").unwrap().bot;
        r.run_tick(&[]);
        r.mark_delivered(0);
        // Two ticks the client does not get: a chat line in each.
        r.run_tick(&[QueuedInput { bot: a, seq: 1, command: Command::Say("one".into()) }]);
        r.mark_lagging(0);
        r.run_tick(&[QueuedInput { bot: a, seq: 2, command: Command::Say("two".into()) }]);
        let snap = r.snapshot_for(0);
        let said: Vec<&str> = snap
            .events
            .iter()
            .filter_map(|e| if let Event::Say { text, .. } = e { Some(text.as_str()) } else { None })
            .collect();
        assert_eq!(said, vec!["one", "two"]);
        assert!(!snap.events_truncated);
        r.mark_resynced(0);
        assert!(r.snapshot_for(0).events.is_empty(), "nothing since the snapshot");
        // A client that stays behind longer than the history keeps is told what it lost.
        r.mark_lagging(0);
        let behind = r.seats()[0].delivered;
        for _ in 0..10 {
            r.run_tick(&[QueuedInput { bot: a, seq: 3, command: Command::Say("x".into()) }]);
        }
        assert!(r.history.since(behind).1, "older events were dropped");
    }

    #[test]
    fn history_keeps_only_what_a_client_may_still_ask_for() {
        let mut r = room(30);
        let a = r.join("a", "t".into(), 1, "c").unwrap().bot;
        for seq in 1..=5 {
            r.run_tick(&[QueuedInput { bot: a, seq, command: Command::Say("hi".into()) }]);
            r.mark_delivered(0);
        }
        // Every tick was handed over: only the last one is kept, in case its update fails.
        assert_eq!(r.history.ticks.len(), 1);
        r.run_tick(&[QueuedInput { bot: a, seq: 6, command: Command::Say("kept".into()) }]);
        r.mark_lagging(0);
        r.run_tick(&[QueuedInput { bot: a, seq: 7, command: Command::Say("kept too".into()) }]);
        let snap = r.snapshot_for(0);
        assert_eq!(snap.events.len(), 2, "{:?}", snap.events);
        assert!(!snap.events_truncated);
    }

    #[test]
    fn detached_seats_are_kept_for_their_bots() {
        let mut r = room(30);
        let a = r.join("a", "t".into(), 1, "c1").unwrap().bot;
        assert_eq!(r.detach_all(), vec!["c1"]);
        assert!(r.has_seat("a") && r.seat(a).unwrap().holder.is_none());
        let again = r.join("a", "t2".into(), 2, "c2").unwrap();
        assert_eq!((again.bot, again.replaced), (a, None));
    }

    #[test]
    fn welcome_describes_the_seat() {
        let mut r = room(30);
        let bot = r.join("a", "tok".into(), 1, "c").unwrap().bot;
        r.run_tick(&[]);
        let w = r.welcome(bot, "w1", &[]).unwrap();
        assert_eq!((w.bot, w.tick, w.tick_hz, w.resume_grace_ms), (bot, 1, 20, 500));
        assert_eq!(w.resume_token, "tok");
        let queued = QueuedInput { bot, seq: 9, command: Command::Say("x".into()) };
        assert_eq!(r.welcome(bot, "w1", &[queued]).unwrap().ack_seq, 9, "queued inputs count");
        assert_eq!(w.snapshot.bots.len(), 1);
        assert_eq!(r.evict_all(), vec!["c"]);
        assert!(r.world().is_empty());
    }
}
