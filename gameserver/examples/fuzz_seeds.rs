//! Write the seed corpus of the fuzz targets (`fuzz/corpus/<target>/seed-*`): real messages,
//! requests, frames, tickets and sessions, so the fuzzer starts from inputs that reach deep.
//!
//! ```sh
//! cargo run -p arena-gameserver --example fuzz_seeds -- fuzz/corpus
//! ```

use std::path::{Path, PathBuf};

use arena_gameserver::room::{QueuedInput, Room, RoomConfig};
use arena_gameserver::world::{World, WorldConfig};
use arena_gameserver::ws::inbound::client_frame;
use arena_sdk::Encoding;
use arena_sdk::codec::encode;
use arena_sdk::protocol::{Act, ClientMsg, Command, ErrorCode, ErrorMsg, Input, Move, ServerMsg};
use arena_sdk::ticket::{Grant, TicketClaims, TicketKey, mint};

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    let clients = client_messages();
    let mut per_target: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("client_message", clients.iter().flat_map(|m| Encoding::ALL.map(|e| encode(e, m).unwrap())).collect()),
        ("server_message", server_messages()),
        ("handshake", handshakes()),
        ("frames", frames(&clients)),
        ("ticket", tickets()),
        ("session", sessions(&clients)),
    ];
    for (target, seeds) in &mut per_target {
        write(&root.join(target), seeds)?;
    }
    Ok(())
}

fn write(dir: &Path, seeds: &[Vec<u8>]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}")), seed)?;
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
    Ok(())
}

fn client_messages() -> Vec<ClientMsg> {
    let key = TicketKey::development();
    let (ticket, _) = mint(&key, &Grant::new("world-1", "bot-7"), 60, 1_800_000_000).unwrap();
    vec![
        ClientMsg::Join { ticket, world: Some("world-1".into()) },
        ClientMsg::Resume { token: "world-1.q3v0mJ8cYk0x2m1S0b0kDQ".into() },
        ClientMsg::Input(Input::new(1, Command::Move(Move::To([500.0, 250.0])))),
        ClientMsg::Input(Input::new(2, Command::Move(Move::By([-3.5, 7.0])))),
        ClientMsg::Input(Input::new(3, Command::Say("hello, world 👋🏽".into()))),
        ClientMsg::Input(Input::new(4, Command::Act(Act { action: "high_five".into(), target: Some(12) }))),
        ClientMsg::Input(Input::new(u32::MAX, Command::Act(Act { action: "wave".into(), target: None }))),
        ClientMsg::Ping { nonce: 42 },
        ClientMsg::Resync,
    ]
}

fn server_messages() -> Vec<Vec<u8>> {
    let mut room: Room<u64> =
        Room::new(World::new(WorldConfig::default(), 7), RoomConfig { grace_ticks: 200, slow_client_ticks: 3 });
    let a = room.join("bot-a", "tok-a".into(), 1, 1).unwrap().bot;
    let b = room.join("bot-b", "tok-b".into(), 2, 2).unwrap().bot;
    room.run_tick(&[]);
    room.run_tick(&[
        QueuedInput { bot: a, seq: 1, command: Command::Say("hi".into()) },
        QueuedInput { bot: b, seq: 1, command: Command::Act(Act { action: "wave".into(), target: Some(a) }) },
        QueuedInput { bot: b, seq: 2, command: Command::Move(Move::To([10.0, 20.0])) },
    ]);
    room.mark_lagging(0);
    let changes = room.changes();
    let update = arena_sdk::protocol::Update {
        ack_seq: 2,
        tick: room.tick(),
        changed: changes.changed.clone(),
        removed: vec![9],
        events: changes.events.clone(),
    };
    let msgs = [
        ServerMsg::Welcome(room.welcome(a, "world-1", &[]).unwrap()),
        ServerMsg::Update(update),
        ServerMsg::Snapshot(room.snapshot_for(0)),
        ServerMsg::Error(ErrorMsg { code: ErrorCode::Overloaded, message: "past its tick budget".into() }),
        ServerMsg::Pong { nonce: 42 },
    ];
    msgs.iter().flat_map(|m| Encoding::ALL.map(|e| encode(e, m).unwrap())).collect()
}

fn handshakes() -> Vec<Vec<u8>> {
    let upgrade = |path: &str, protocols: &str, version: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:7000\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n{protocols}\r\n"
        )
        .into_bytes()
    };
    vec![
        upgrade("/ws", "Sec-WebSocket-Protocol: arena.v1.msgpack\r\n", "13"),
        upgrade("/ws", "Sec-WebSocket-Protocol: chat, arena.v1.json\r\n", "13"),
        upgrade("/ws", "", "13"),
        upgrade("/other", "Sec-WebSocket-Protocol: arena.v1.json\r\n", "13"),
        upgrade("/ws", "Sec-WebSocket-Protocol: arena.v1.json\r\n", "8"),
        b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n".to_vec(),
    ]
}

/// Frames as a client sends them, after the chunk-size byte the `frames` target reads first.
fn frames(clients: &[ClientMsg]) -> Vec<Vec<u8>> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let json = encode(Encoding::Json, &clients[2]).unwrap();
    let pack = encode(Encoding::MsgPack, &clients[4]).unwrap();
    let (first, last) = json.split_at(json.len() / 2);
    let stream = |chunk: u8, frames: &[Vec<u8>]| [vec![chunk], frames.concat()].concat();
    vec![
        stream(255, &[client_frame(true, 0x1, &json, mask)]),
        stream(3, &[client_frame(true, 0x2, &pack, mask)]),
        stream(
            7,
            &[
                client_frame(false, 0x1, first, mask),
                client_frame(true, 0x9, b"ping", mask),
                client_frame(true, 0x0, last, mask),
            ],
        ),
        stream(
            64,
            &[client_frame(true, 0xA, b"", mask), client_frame(true, 0x8, &[0x03, 0xe8, b'b', b'y', b'e'], mask)],
        ),
        stream(
            1,
            &[
                client_frame(false, 0x2, b"", mask),
                client_frame(false, 0x0, b"", mask),
                client_frame(false, 0x0, b"", mask),
            ],
        ),
        stream(200, &[client_frame(true, 0x2, &vec![0u8; 5000], mask)]),
    ]
}

/// Ticket payloads (the `ticket` target signs them) and one whole ticket.
fn tickets() -> Vec<Vec<u8>> {
    let claims = TicketClaims {
        world: "world-1".into(),
        bot: "bot-7".into(),
        server: Some("gs-us-1".into()),
        fence: Some(42),
        exp: 1_800_000_030,
        nonce: "q3v0mJ8cYk0x2m1S0b0kDQ".into(),
    };
    let (whole, _) = mint(&TicketKey::development(), &Grant::new("world-1", "bot-7"), 60, 1_800_000_000).unwrap();
    vec![
        serde_json::to_vec(&claims).unwrap(),
        serde_json::to_vec(&TicketClaims { server: None, fence: None, ..claims.clone() }).unwrap(),
        br#"{"w":"w","b":"b","exp":1800000010,"n":"n","x":1}"#.to_vec(),
        whole.into_bytes(),
    ]
}

/// Sessions: `[length, meta, payload]` records (meta: low 2 bits the kind, the rest 10 ms steps).
fn sessions(clients: &[ClientMsg]) -> Vec<Vec<u8>> {
    let record = |kind: u8, wait: u8, payload: &[u8]| {
        let mut r = vec![payload.len().min(255) as u8, (wait << 2) | kind];
        r.extend_from_slice(&payload[..payload.len().min(255)]);
        r
    };
    let mut seeds: Vec<Vec<u8>> = Encoding::ALL
        .iter()
        .map(|&enc| {
            let kind = u8::from(enc.is_binary());
            clients.iter().flat_map(|m| record(kind, 5, &encode(enc, m).unwrap())).chain(record(2, 0, b"")).collect()
        })
        .collect();
    // A flood of pings and fragments: the rate runs out.
    seeds.push((0..60).flat_map(|_| record(2, 0, b"")).collect());
    // Violations in a row: garbage, the wrong frame type, an input before joining.
    let input = encode(Encoding::Json, &clients[2]).unwrap();
    seeds.push((0..12).flat_map(|i| record((i % 2) as u8, 1, if i % 3 == 0 { b"{]" } else { &input })).collect());
    seeds
}
