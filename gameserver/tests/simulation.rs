//! A deterministic simulation of the gameserver's core on virtual time, in the manner of quinn's
//! `Pair`: the real worlds, shards, tick and fan-out (`worlds.rs`, `tick.rs`), the real rooms and
//! the real per-connection sessions (`session.rs`), driven by many simulated clients over
//! in-memory links — with joins, inputs, drops, resumes, leaves, slow readers and stalled ones —
//! and the SDK's client mirror on the other side. After every tick:
//!
//! - every client that has read everything it was sent holds exactly the server's world (the
//!   mirror equals the world, tick for tick) and the server's acknowledgement of its inputs;
//! - no world holds more bots than its capacity, and no bot holds two seats;
//! - a client that fell behind gets a snapshot and is equal again once it reads it.
//!
//! Everything is seeded: a failure replays exactly.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arena_gameserver::link::{Delivery, Link, Outgoing};
use arena_gameserver::room::{LagAction, RoomConfig};
use arena_gameserver::session::{Session, SessionLimits, Step};
use arena_gameserver::tick::TickScratch;
use arena_gameserver::world::WorldConfig;
use arena_gameserver::worlds::{Joined, NoHooks, Worlds, WorldsConfig};
use arena_sdk::Encoding;
use arena_sdk::codec::{decode_server, encode};
use arena_sdk::mirror::{ClientSession, SessionEvent};
use arena_sdk::protocol::{Act, Command, Move, ServerMsg};
use arena_sdk::rng::SplitMix64;
use parking_lot::Mutex;

/// The client's side of an in-memory connection: what the server sent and it has not read.
#[derive(Debug, Default)]
struct Pipe {
    unread: VecDeque<Vec<u8>>,
    bytes: usize,
    closed: Option<u16>,
}

/// The server's handle on a simulated connection. `cap` bytes unread make it refuse more, as a
/// full socket and queue would.
#[derive(Debug, Clone)]
struct SimLink {
    id: u64,
    enc: Encoding,
    cap: usize,
    pipe: Arc<Mutex<Pipe>>,
}

impl Link for SimLink {
    fn id(&self) -> u64 {
        self.id
    }
    fn encoding(&self) -> Encoding {
        self.enc
    }
    fn send(&self, message: &mut Outgoing<'_>) -> Delivery {
        let message = message.message();
        let mut p = self.pipe.lock();
        if p.closed.is_some() {
            return Delivery::Closed;
        }
        if p.bytes + message.len() > self.cap {
            return Delivery::Full;
        }
        p.bytes += message.len();
        p.unread.push_back(message.to_vec());
        Delivery::Sent
    }
    fn is_drained(&self) -> bool {
        self.pipe.lock().unread.is_empty()
    }
    fn close(&self, code: u16, _reason: &str) {
        self.pipe.lock().closed.get_or_insert(code);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Reader {
    /// Reads everything every tick.
    Prompt,
    /// Reads once every `n` ticks.
    Slow(u64),
    /// Stops reading for a while, then reads again.
    Stalling { until: u64 },
}

struct SimClient {
    name: String,
    world: String,
    enc: Encoding,
    reader: Reader,
    link: Option<SimLink>,
    session: Option<Session>,
    mirror: ClientSession,
    seat: Option<Joined<SimLink>>,
    token: Option<String>,
}

/// What the run saw, for the report and for assertions that things happened at all.
#[derive(Debug, Default)]
struct Seen {
    joins: u64,
    resumes: u64,
    refused: u64,
    drops: u64,
    leaves: u64,
    inputs: u64,
    snapshots: u64,
    slow_closes: u64,
    checks: u64,
}

const TICK: Duration = Duration::from_millis(50);

struct Sim {
    worlds: Worlds<SimLink>,
    clients: Vec<SimClient>,
    rng: SplitMix64,
    next_link: u64,
    now: u64,
    scratch: TickScratch,
    seen: Seen,
    capacity: usize,
}

impl Sim {
    fn new(seed: u64, clients: usize, worlds: usize, capacity: usize) -> Self {
        let cfg = WorldsConfig {
            max_worlds: worlds,
            shards: 4,
            world: WorldConfig { capacity, ..WorldConfig::default() },
            room: RoomConfig { grace_ticks: 60, slow_client_ticks: 40 },
            input_queue: 1024,
            idle_unload_ticks: 200,
            load_first: false,
            save_before_unload: false,
            suspend_keep: Duration::from_secs(60),
        };
        let mut rng = SplitMix64::new(seed);
        let clients = (0..clients)
            .map(|i| SimClient {
                name: format!("bot-{i}"),
                // More bots than seats: worlds fill, joins are refused, seats free up.
                world: format!("w{}", rng.below(worlds as u64)),
                enc: if i % 3 == 0 { Encoding::Json } else { Encoding::MsgPack },
                reader: match i % 10 {
                    0 => Reader::Slow(3),
                    1 => Reader::Stalling { until: 0 },
                    _ => Reader::Prompt,
                },
                link: None,
                session: None,
                mirror: ClientSession::new(),
                seat: None,
                token: None,
            })
            .collect();
        Sim {
            worlds: Worlds::new(cfg),
            clients,
            rng,
            next_link: 1,
            now: 0,
            scratch: TickScratch::default(),
            seen: Seen::default(),
            capacity,
        }
    }

    fn now(&self) -> Duration {
        TICK * self.now as u32
    }

    fn command(rng: &mut SplitMix64) -> Command {
        match rng.below(4) {
            0 => Command::Move(Move::To([rng.next_f32() * 1000.0, rng.next_f32() * 1000.0])),
            1 => Command::Move(Move::By([rng.next_f32() * 60.0 - 30.0, rng.next_f32() * 60.0 - 30.0])),
            2 => Command::Say(format!("line {}", rng.next_u64() % 1000)),
            _ => Command::Act(Act { action: "wave".into(), target: (rng.below(2) == 0).then(|| rng.below(40) as u32) }),
        }
    }

    /// What one client does this tick.
    fn act(&mut self, i: usize) {
        let now = self.now();
        let roll = self.rng.next_f64();
        let c = &mut self.clients[i];
        match &c.seat {
            None if c.link.is_none() && roll < 0.05 => {
                let link = SimLink { id: self.next_link, enc: c.enc, cap: 8 * 1024, pipe: Arc::default() };
                self.next_link += 1;
                let resume = c.token.clone().filter(|_| self.rng.below(4) > 0);
                let result = match &resume {
                    Some(token) => self.worlds.resume(token, &link),
                    None => {
                        self.worlds.get_or_create(&c.world).and_then(|cell| self.worlds.seat(&cell, &c.name, &link))
                    }
                };
                match result {
                    Ok(seat) => {
                        let mut session = Session::new(c.enc, SessionLimits::default(), now);
                        session.joined(seat.ack_seq);
                        c.session = Some(session);
                        c.seat = Some(seat);
                        c.link = Some(link);
                        c.mirror = ClientSession::new();
                        if resume.is_some() {
                            self.seen.resumes += 1;
                        } else {
                            self.seen.joins += 1;
                        }
                        // A client reads its welcome before it sends anything.
                        self.read_now(i);
                    }
                    Err(_) => {
                        // Full world, or a token whose seat is gone: try joining later.
                        c.token = None;
                        self.seen.refused += 1;
                    }
                }
            }
            None => {}
            Some(seat) => {
                let (bot, conn) = (seat.bot, c.link.as_ref().map_or(0, |l| l.id));
                if roll < 0.004 {
                    // The connection drops: the seat is kept for the grace period.
                    seat.cell.disconnect(bot, conn);
                    c.seat = None;
                    c.link = None;
                    self.seen.drops += 1;
                } else if roll < 0.005 {
                    seat.cell.leave(bot, conn);
                    c.seat = None;
                    c.link = None;
                    c.token = None;
                    self.seen.leaves += 1;
                } else if roll < 0.12 {
                    let msg = c.mirror.input(Self::command(&mut self.rng));
                    let bytes = encode(c.enc, &msg).unwrap();
                    let session = c.session.as_mut().unwrap();
                    match session.on_frame(c.enc.is_binary(), &bytes, now) {
                        Step::Input { seq, command } => {
                            let _ = seat.cell.push_input(bot, seq, command);
                            self.seen.inputs += 1;
                        }
                        other => panic!("{}: a valid input was refused: {other:?}", c.name),
                    }
                }
            }
        }
    }

    /// What one client reads this tick.
    fn read(&mut self, i: usize) {
        let now = self.now;
        let c = &mut self.clients[i];
        let reads = match &mut c.reader {
            Reader::Prompt => true,
            Reader::Slow(n) => now.is_multiple_of(*n),
            Reader::Stalling { until } => {
                if now >= *until && self.rng.below(400) == 0 {
                    *until = now + 20 + self.rng.below(50);
                }
                now >= *until
            }
        };
        if reads {
            self.read_now(i);
        }
        let c = &mut self.clients[i];
        let Some(link) = c.link.clone() else { return };
        let closed = link.pipe.lock().closed;
        if let Some(code) = closed {
            // The server closed it (too slow): its seat is kept; resume later.
            assert_eq!(code, arena_sdk::protocol::close::SLOW_CONSUMER, "{}", c.name);
            c.seat = None;
            c.link = None;
            self.seen.slow_closes += 1;
        }
    }

    /// Read everything client `i` was sent.
    fn read_now(&mut self, i: usize) {
        let now = self.now;
        let c = &mut self.clients[i];
        let Some(link) = c.link.clone() else { return };
        let next = || {
            let mut p = link.pipe.lock();
            let next = p.unread.pop_front();
            if let Some(b) = &next {
                p.bytes -= b.len();
            }
            next
        };
        while let Some(bytes) = next() {
            let msg = decode_server(c.enc, &bytes).unwrap_or_else(|e| panic!("{}: undecodable: {e}", c.name));
            match c.mirror.handle(&msg) {
                SessionEvent::ResyncNeeded(_) => {
                    let resync = encode(c.enc, &c.mirror.resync()).unwrap();
                    let session = c.session.as_mut().unwrap();
                    if let Step::Resync = session.on_frame(c.enc.is_binary(), &resync, TICK * now as u32)
                        && let Some(seat) = &c.seat
                    {
                        seat.cell.request_resync(seat.bot);
                    }
                }
                SessionEvent::Resynced => self.seen.snapshots += 1,
                SessionEvent::Welcomed => {
                    if let ServerMsg::Welcome(w) = &msg {
                        c.token = Some(w.resume_token.clone());
                    }
                }
                _ => {}
            }
        }
    }

    fn step(&mut self) {
        let mut order: Vec<usize> = (0..self.clients.len()).collect();
        // A fresh order every tick, from the seed.
        for i in (1..order.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        for &i in &order {
            self.act(i);
        }
        self.now += 1;
        for shard in 0..self.worlds.shard_count() {
            self.worlds.tick_shard(shard, self.now(), true, &mut self.scratch, &mut NoHooks);
        }
        for &i in &order {
            self.read(i);
        }
        self.check();
    }

    fn check(&mut self) {
        let mut seated: HashMap<String, String> = HashMap::new();
        for cell in self.worlds.cells() {
            let st = cell.state.lock();
            let room = &st.room;
            assert!(room.seats().len() <= self.capacity, "world {} holds {} bots", cell.world_id(), room.seats().len());
            assert_eq!(room.world().len(), room.seats().len());
            for s in room.seats() {
                let other = seated.insert(s.name.clone(), cell.world_id().to_string());
                assert!(other.is_none(), "{} holds two seats", s.name);
            }
        }
        for c in &self.clients {
            let (Some(seat), Some(link)) = (&c.seat, &c.link) else { continue };
            if !link.pipe.lock().unread.is_empty() || c.mirror.awaiting_resync() {
                continue;
            }
            let Some(mirror) = c.mirror.mirror() else { continue };
            let st = seat.cell.state.lock();
            let room = &st.room;
            // A client the server holds back (it lagged) gets a snapshot next: not in step yet.
            let i = room.seats().iter().position(|s| s.bot == seat.bot).expect("its seat");
            if room.lag_action(i, || true) != LagAction::Update {
                continue;
            }
            assert_eq!(mirror.tick(), room.tick(), "{}: mirror tick", c.name);
            let same =
                mirror.len() == room.world().len() && mirror.bots().zip(room.world().bots()).all(|(a, b)| a == b);
            assert!(
                same,
                "{}: mirror differs at tick {}: {:?} vs {:?}",
                c.name,
                room.tick(),
                mirror.snapshot(),
                room.world().snapshot()
            );
            let ack = room.seat(seat.bot).map(|s| s.ack_seq);
            assert_eq!(Some(mirror.ack_seq()), ack, "{}: acknowledged inputs", c.name);
            self.seen.checks += 1;
        }
    }
}

/// Thousands of clients, minutes of virtual time.
#[test]
fn thousands_of_clients_for_minutes_of_virtual_time_stay_in_sync() {
    let started = std::time::Instant::now();
    let ticks = 2 * 60 * 20;
    let mut sim = Sim::new(0x5eed_a7e4a, 1_000, 34, 30);
    for _ in 0..ticks {
        sim.step();
    }
    let s = &sim.seen;
    eprintln!("{} virtual seconds in {:?}: {s:?}", ticks / 20, started.elapsed());
    assert!(s.joins > 1_000 && s.resumes > 100 && s.drops > 100 && s.leaves > 20, "{s:?}");
    assert!(s.inputs > 100_000 && s.snapshots > 100 && s.slow_closes > 10 && s.refused > 10, "{s:?}");
    assert!(s.checks > 1_000_000, "{s:?}");
}

/// The same run twice is the same run.
#[test]
fn a_simulation_replays_exactly() {
    let run = || {
        let mut sim = Sim::new(42, 200, 8, 30);
        for _ in 0..400 {
            sim.step();
        }
        let worlds: Vec<_> = {
            let mut cells = sim.worlds.cells();
            cells.sort_by(|a, b| a.world_id().cmp(b.world_id()));
            cells.iter().map(|c| c.state.lock().room.world().snapshot()).collect()
        };
        (format!("{:?}", sim.seen), worlds)
    };
    assert_eq!(run(), run());
}
