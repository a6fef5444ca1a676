//! One server tick of 334 worlds × 30 bots: apply inputs, step, and encode each world's update
//! once (the socket writes are measured by the load tester, not here).
//!
//! Workload: every bot walks (new target every ~5 s) and sends 2 inputs per second (a mix of move,
//! say and act), i.e. 3 inputs per world per tick at 20 Hz.

use std::hint::black_box;

use arena_gameserver::room::{QueuedInput, Room, RoomConfig};
use arena_gameserver::world::{World, WorldConfig};
use arena_sdk::Encoding;
use arena_sdk::codec::encode_update;
use arena_sdk::protocol::{Act, Command, Move};
use arena_sdk::rng::SplitMix64;
use criterion::{Criterion, criterion_group, criterion_main};

const WORLDS: usize = 334;
const BOTS: usize = 30;

fn rooms() -> Vec<Room<()>> {
    (0..WORLDS)
        .map(|w| {
            let mut room = Room::new(
                World::new(WorldConfig::default(), w as u64),
                RoomConfig { grace_ticks: 200, slow_client_ticks: 100 },
            );
            for b in 0..BOTS {
                room.join(&format!("bot-{w}-{b}"), format!("t{b}"), b as u64, ()).unwrap();
            }
            room
        })
        .collect()
}

/// Inputs for one tick of one world: 3 of them, from rotating bots.
fn inputs(rng: &mut SplitMix64, tick: u64, seq: &mut u32) -> Vec<QueuedInput> {
    (0..3)
        .map(|i| {
            *seq += 1;
            let bot = ((tick as usize * 3 + i) % BOTS + 1) as u32;
            let command = match rng.next_u64() % 4 {
                0 | 1 => Command::Move(Move::To([rng.next_f32() * 1000.0, rng.next_f32() * 1000.0])),
                2 => Command::Say("heading to the fountain, anyone coming?".into()),
                _ => {
                    Command::Act(Act { action: "wave".into(), target: Some((rng.next_u64() % BOTS as u64) as u32 + 1) })
                }
            };
            QueuedInput { bot, seq: *seq, command }
        })
        .collect()
}

fn bench_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("tick_334_worlds_x_30_bots");
    for enc in Encoding::ALL {
        let mut rooms = rooms();
        let mut rng = SplitMix64::new(1);
        let mut seq = 0;
        let mut tick = 0u64;
        // Warm up: every bot has somewhere to go.
        for room in &mut rooms {
            let warm: Vec<QueuedInput> = (1..=BOTS as u32)
                .map(|bot| QueuedInput {
                    bot,
                    seq: 0,
                    command: Command::Move(Move::To([rng.next_f32() * 1000.0, rng.next_f32() * 1000.0])),
                })
                .collect();
            room.run_tick(&warm);
        }
        let (mut head, mut tail) = (Vec::with_capacity(256), Vec::with_capacity(4096));
        let mut bytes = 0usize;
        group.bench_function(format!("{enc:?}"), |b| {
            b.iter(|| {
                tick += 1;
                for room in &mut rooms {
                    let queued = inputs(&mut rng, tick, &mut seq);
                    room.run_tick(&queued);
                    let ch = room.changes();
                    head.clear();
                    tail.clear();
                    encode_update(enc, room.tick(), &ch.changed, &ch.removed, &ch.events, &mut head, &mut tail)
                        .unwrap();
                    bytes = head.len() + tail.len();
                    black_box((&head, &tail));
                }
            })
        });
        eprintln!("{enc:?}: last update {bytes} bytes per world");
    }
    group.finish();
}

criterion_group!(benches, bench_tick);
criterion_main!(benches);
