//! Property: for any sequence of joins, leaves, drops, resumes, inputs and ticks, every client
//! mirror that applies the encoded updates (through the real codec, both encodings) equals the
//! server's world after every tick, acknowledges exactly its seat's inputs, and no world ever
//! holds more than its capacity.

use std::collections::HashMap;

use arena_gameserver::room::{QueuedInput, Room, RoomConfig};
use arena_gameserver::world::{World, WorldConfig};
use arena_sdk::Encoding;
use arena_sdk::codec::{ack_bytes, decode_server, encode, encode_update};
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

/// A client: its connection id, encoding, mirror and last sent seq.
struct ClientSide {
    conn: u64,
    enc: Encoding,
    mirror: Mirror,
    seq: u32,
}

fn roundtrip(enc: Encoding, msg: &ServerMsg) -> ServerMsg {
    decode_server(enc, &encode(enc, msg).unwrap()).unwrap()
}

fn run(ops: Vec<Op>, seed: u64) -> Result<(), TestCaseError> {
    let world = World::new(WorldConfig { capacity: CAPACITY, ..WorldConfig::default() }, seed);
    let mut room: Room<u64> = Room::new(world, RoomConfig { grace_ticks: 3, slow_client_ticks: 100 });
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
                let seated = match op {
                    Op::Join(_) => room.join(&name(n), token.clone(), conn, conn).ok(),
                    _ => tokens.get(&n).and_then(|t| room.resume(t, token.clone(), conn, conn).ok()),
                };
                let Some(seated) = seated else { continue };
                tokens.insert(n, token);
                let enc = if conn.is_multiple_of(2) { Encoding::Json } else { Encoding::MsgPack };
                let welcome = match roundtrip(enc, &ServerMsg::Welcome(room.welcome(seated.bot, "w", &inbox).unwrap()))
                {
                    ServerMsg::Welcome(w) => w,
                    other => return Err(TestCaseError::fail(format!("{other:?}"))),
                };
                let seq = welcome.ack_seq;
                clients.insert(n, ClientSide { conn, enc, mirror: Mirror::from_welcome(&welcome), seq });
            }
            Op::Leave(n) | Op::Drop(n) => {
                if let Some(c) = clients.remove(&n) {
                    let bot = c.mirror.me();
                    if matches!(op, Op::Leave(_)) {
                        prop_assert!(room.leave(bot, c.conn));
                        tokens.remove(&n);
                    } else {
                        prop_assert!(room.disconnect(bot, c.conn));
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
                room.run_tick(&inbox);
                inbox.clear();
                // Clients whose seat expired (grace ran out while they were away) are gone.
                clients.retain(|_, c| {
                    room.seat(c.mirror.me()).is_some_and(|s| s.holder.as_ref().map(|h| h.id) == Some(c.conn))
                });
                let ch = room.changes();
                let mut frames = HashMap::new();
                for enc in Encoding::ALL {
                    let (mut head, mut tail) = (Vec::new(), Vec::new());
                    encode_update(enc, room.tick(), &ch.changed, &ch.removed, &ch.events, &mut head, &mut tail)
                        .unwrap();
                    frames.insert(enc, (head, tail));
                }
                for c in clients.values_mut() {
                    let i = room.seats().iter().position(|s| s.bot == c.mirror.me()).unwrap();
                    if room.lag_action(i, || true) == arena_gameserver::room::LagAction::Snapshot {
                        let snap = roundtrip(c.enc, &ServerMsg::Snapshot(room.snapshot_for(i)));
                        let ServerMsg::Snapshot(s) = snap else { unreachable!() };
                        c.mirror.reset(s.tick, s.ack_seq, &s.snapshot);
                        room.mark_resynced(i);
                        continue;
                    }
                    let (head, tail) = &frames[&c.enc];
                    let mut buf = [0u8; 10];
                    let mut bytes = head.clone();
                    bytes.extend_from_slice(ack_bytes(c.enc, room.seats()[i].ack_seq, &mut buf));
                    bytes.extend_from_slice(tail);
                    let ServerMsg::Update(u) = decode_server(c.enc, &bytes).unwrap() else {
                        return Err(TestCaseError::fail("not an update"));
                    };
                    c.mirror.apply_update(&u).map_err(|e| TestCaseError::fail(e.to_string()))?;
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
