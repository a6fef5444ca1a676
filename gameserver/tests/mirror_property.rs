//! Property: for any sequence of joins, leaves, drops, resumes, inputs, resync requests and
//! ticks, every client mirror that applies what the real tick (`tick::tick_room`: the update
//! encoded once per encoding, each client's ack patched in, resync snapshots) hands its link —
//! decoded with the real codec, both encodings — equals the server's world after every tick,
//! acknowledges exactly its seat's inputs, and no world ever holds more than its capacity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arena_gameserver::link::{Delivery, Link, Outgoing};
use arena_gameserver::room::{QueuedInput, Room, RoomConfig};
use arena_gameserver::tick::{TickScratch, TickStats, tick_room};
use arena_gameserver::world::{World, WorldConfig};
use arena_sdk::Encoding;
use arena_sdk::codec::{decode_server, encode};
use arena_sdk::mirror::Mirror;
use arena_sdk::protocol::{Act, Command, Move, ServerMsg};
use proptest::prelude::*;

const CAPACITY: usize = 4;
const NAMES: usize = 7;

#[derive(Debug, Clone)]
enum Op {
    Join(usize),
    Leave(usize),
    Drop(usize),
    Resume(usize),
    Input(usize, Command),
    Resync(usize),
    Tick,
}

fn command() -> impl Strategy<Value = Command> {
    let coord = -100.0f32..1100.0;
    prop_oneof![
        (coord.clone(), coord.clone()).prop_map(|(x, y)| Command::Move(Move::To([x, y]))),
        (-300.0f32..300.0, -300.0f32..300.0).prop_map(|(x, y)| Command::Move(Move::By([x, y]))),
        "[a-z ]{1,20}".prop_map(Command::Say),
        ("[a-z_]{1,8}", proptest::option::of(0u32..10))
            .prop_map(|(action, target)| Command::Act(Act { action, target })),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..NAMES).prop_map(Op::Join),
        1 => (0..NAMES).prop_map(Op::Leave),
        1 => (0..NAMES).prop_map(Op::Drop),
        1 => (0..NAMES).prop_map(Op::Resume),
        6 => ((0..NAMES), command()).prop_map(|(n, c)| Op::Input(n, c)),
        1 => (0..NAMES).prop_map(Op::Resync),
        5 => Just(Op::Tick),
    ]
}

/// A connection that keeps what the tick hands it.
#[derive(Debug, Clone)]
struct Recorder {
    id: u64,
    enc: Encoding,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Link for Recorder {
    fn id(&self) -> u64 {
        self.id
    }
    fn encoding(&self) -> Encoding {
        self.enc
    }
    fn send(&self, message: &mut Outgoing<'_>) -> Delivery {
        self.sent.lock().unwrap().push(message.message().to_vec());
        Delivery::Sent
    }
    fn is_drained(&self) -> bool {
        true
    }
    fn close(&self, _: u16, _: &str) {}
}

/// A client: its connection, mirror and last sent seq.
struct ClientSide {
    link: Recorder,
    mirror: Mirror,
    seq: u32,
}

fn roundtrip(enc: Encoding, msg: &ServerMsg) -> ServerMsg {
    decode_server(enc, &encode(enc, msg).unwrap()).unwrap()
}

fn run(ops: Vec<Op>, seed: u64) -> Result<(), TestCaseError> {
    let world = World::new(WorldConfig { capacity: CAPACITY, ..WorldConfig::default() }, seed);
    let mut room: Room<Recorder> = Room::new(world, RoomConfig { grace_ticks: 3, slow_client_ticks: 100 });
    let (mut scratch, mut stats) = (TickScratch::default(), TickStats::default());
    let mut clients: HashMap<usize, ClientSide> = HashMap::new();
    let mut tokens: HashMap<usize, String> = HashMap::new();
    let mut inbox: Vec<QueuedInput> = Vec::new();
    let mut next_conn = 1u64;
    let name = |n: usize| format!("bot{n}");

    for op in ops {
        match op {
            Op::Join(n) | Op::Resume(n) => {
                if clients.contains_key(&n) {
                    continue;
                }
                let conn = next_conn;
                next_conn += 1;
                let token = format!("tok{conn}");
                let enc = if conn.is_multiple_of(2) { Encoding::Json } else { Encoding::MsgPack };
                let link = Recorder { id: conn, enc, sent: Arc::default() };
                let seated = match op {
                    Op::Join(_) => room.join(&name(n), token.clone(), conn, link.clone()).ok(),
                    _ => tokens.get(&n).and_then(|t| room.resume(t, token.clone(), conn, link.clone()).ok()),
                };
                let Some(seated) = seated else { continue };
                tokens.insert(n, token);
                let welcome = match roundtrip(enc, &ServerMsg::Welcome(room.welcome(seated.bot, "w", &inbox).unwrap()))
                {
                    ServerMsg::Welcome(w) => w,
                    other => return Err(TestCaseError::fail(format!("{other:?}"))),
                };
                let seq = welcome.ack_seq;
                clients.insert(n, ClientSide { link, mirror: Mirror::from_welcome(&welcome), seq });
            }
            Op::Leave(n) | Op::Drop(n) => {
                if let Some(c) = clients.remove(&n) {
                    let bot = c.mirror.me();
                    if matches!(op, Op::Leave(_)) {
                        prop_assert!(room.leave(bot, c.link.id));
                        tokens.remove(&n);
                    } else {
                        prop_assert!(room.disconnect(bot, c.link.id));
                    }
                }
            }
            Op::Input(n, command) => {
                if let Some(c) = clients.get_mut(&n) {
                    c.seq += 1;
                    inbox.push(QueuedInput { bot: c.mirror.me(), seq: c.seq, command });
                }
            }
            Op::Resync(n) => {
                if let Some(c) = clients.get_mut(&n) {
                    room.request_resync(c.mirror.me());
                }
            }
            Op::Tick => {
                tick_room(&mut room, &inbox, &mut scratch, &mut stats);
                inbox.clear();
                // Clients whose seat expired (grace ran out while they were away) are gone.
                clients.retain(|_, c| {
                    room.seat(c.mirror.me()).is_some_and(|s| s.holder.as_ref().map(|h| h.id) == Some(c.link.id))
                });
                for c in clients.values_mut() {
                    for bytes in std::mem::take(&mut *c.link.sent.lock().unwrap()) {
                        match decode_server(c.link.enc, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))? {
                            ServerMsg::Update(u) => {
                                c.mirror.apply_update(&u).map_err(|e| TestCaseError::fail(e.to_string()))?
                            }
                            ServerMsg::Snapshot(s) => c.mirror.reset(s.tick, s.ack_seq, &s.snapshot),
                            other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
                        }
                    }
                }
                for c in clients.values() {
                    prop_assert_eq!(c.mirror.snapshot(), room.world().snapshot());
                    prop_assert_eq!(c.mirror.tick(), room.tick());
                    prop_assert_eq!(c.mirror.ack_seq(), c.seq, "every sent input is acknowledged after a tick");
                }
            }
        }
        prop_assert!(room.world().len() <= CAPACITY);
        prop_assert_eq!(room.world().len(), room.seats().len());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn mirrors_equal_the_world_and_capacity_holds(ops in proptest::collection::vec(op(), 1..250), seed in any::<u64>()) {
        run(ops, seed)?;
    }
}
