//! A world and its seats, without I/O.
//!
//! A seat is a bot's place in a world. It is held by one connection at a time; when that
//! connection drops without a goodbye the seat is kept for a grace period so the bot can resume
//! with its token. The room decides who is seated, which inputs apply, when kept seats expire and
//! what a lagging client receives; the I/O layer only carries its decisions out. `C` is the
//! connection handle the I/O layer wants back when it must write to or close a connection.

use arena_sdk::protocol::{BotId, Command, Snapshot, Tick, Welcome};
use serde::{Deserialize, Serialize};

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

#[derive(Debug)]
pub struct Room<C> {
    world: World,
    config: RoomConfig,
    seats: Vec<Seat<C>>,
    changes: Changes,
    /// The tick at which the room last became empty (creation counts).
    empty_since: Option<Tick>,
}

impl<C> Room<C> {
    pub fn new(world: World, config: RoomConfig) -> Self {
        let empty_since = Some(world.tick());
        Room { world, config, seats: Vec::new(), changes: Changes::default(), empty_since }
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
            })
            .collect();
        let empty_since = seats.is_empty().then_some(tick);
        Room { world, config: room, seats, changes: Changes::default(), empty_since }
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
        });
        self.empty_since = None;
        Ok(Seated { bot, replaced: None })
    }

    /// Take a seat back with its resume token; `new_token` replaces the old one.
    pub fn resume(&mut self, token: &str, new_token: String, conn_id: u64, conn: C) -> Result<Seated<C>, UnknownToken> {
        let i = self.seats.iter().position(|s| constant_time_eq(&s.token, token)).ok_or(UnknownToken)?;
        Ok(self.reattach(i, new_token, conn_id, conn))
    }

    fn reattach(&mut self, i: usize, token: String, conn_id: u64, conn: C) -> Seated<C> {
        let seat = &mut self.seats[i];
        let replaced = seat.holder.replace(Holder { id: conn_id, conn }).map(|h| h.conn);
        seat.token = token;
        seat.disconnected_at = None;
        // The welcome carries a fresh snapshot.
        seat.needs_resync = false;
        seat.lagging_since = None;
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
        self.world.remove_bot(seat.bot);
        if self.seats.is_empty() {
            self.empty_since = Some(self.world.tick());
        }
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
        let seat = &mut self.seats[i];
        seat.needs_resync = false;
        seat.lagging_since = None;
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

    /// A resync `snapshot` for seat `i`.
    pub fn snapshot_for(&self, i: usize) -> Snapshot {
        Snapshot { tick: self.world.tick(), ack_seq: self.seats[i].ack_seq, snapshot: self.world.snapshot() }
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
