//! One tick of one world, without I/O: apply the queued inputs, step the world, and fan the
//! update out — encoded once per encoding, each client's `ack_seq` patched into the shared
//! message, one [`Link::send`] per client — while the lag policy decides who gets a resync
//! snapshot (with the events it replaces) and who is dropped.
//!
//! The caller (the shard loop in `worlds.rs`, or a test) owns the time and the locks; this only
//! moves bytes it was given to links it was given, so it runs the same in the server and in the
//! simulation harness.

use arena_sdk::Encoding;
use arena_sdk::codec::{ack_bytes, ack_len, encode_update};
use arena_sdk::protocol::{BotId, ServerMsg, close};

use crate::link::{Delivery, HEADROOM, Link, Outgoing, send_msg};
use crate::room::{LagAction, QueuedInput, Room};

/// Buffers a shard reuses from tick to tick.
#[derive(Debug, Default)]
pub struct TickScratch {
    pub inputs: Vec<QueuedInput>,
    head: Vec<u8>,
    tail: Vec<u8>,
    /// This tick's update per encoding, whole, after `HEADROOM` free bytes for the transport's
    /// frame header; only the `ack_seq` bytes at `ack_at[e]` change from one client to the next.
    messages: [Vec<u8>; 2],
    ack_at: [usize; 2],
    marks: Vec<(usize, SeatMark)>,
    dropped: Vec<(BotId, u64)>,
}

/// A seat state change decided while the room was borrowed for writing.
#[derive(Debug, Clone, Copy)]
enum SeatMark {
    Delivered,
    Lagging,
    Resynced,
}

/// What ticks did, summed by the caller before it touches shared counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickStats {
    pub bytes: u64,
    pub messages: u64,
    /// Per-client updates owed.
    pub due: u64,
    /// Per-client updates (or resync snapshots) handed to their connections.
    pub delivered: u64,
    pub resynced: u64,
    /// Clients closed as too slow.
    pub dropped: u64,
    /// Inputs applied.
    pub inputs: u64,
    /// Updates that could not be encoded (none is sent then; clients resync on the gap).
    pub encode_errors: u64,
}

/// Run one tick of `room` with `inputs` (taken from its inbox, in arrival order).
pub fn tick_room<L: Link>(
    room: &mut Room<L>,
    inputs: &[QueuedInput],
    scratch: &mut TickScratch,
    stats: &mut TickStats,
) {
    stats.inputs += inputs.len() as u64;
    room.run_tick(inputs);
    fan_out(room, scratch, stats);
}

/// Hand this tick's update to every seated client, per the lag policy.
fn fan_out<L: Link>(room: &mut Room<L>, scratch: &mut TickScratch, stats: &mut TickStats) {
    // Per encoding: not encoded yet (None), or encoded (Some(ok)).
    let mut encoded: [Option<bool>; 2] = [None, None];
    let mut ack = [0u8; 10];
    for (i, seat) in room.seats().iter().enumerate() {
        let Some(holder) = &seat.holder else { continue };
        let link = &holder.conn;
        stats.due += 1;
        match room.lag_action(i, || link.is_drained()) {
            LagAction::Update => {
                let enc = link.encoding();
                let e = enc.index();
                let ok = *encoded[e].get_or_insert_with(|| encode_message(enc, room, scratch));
                if !ok {
                    continue;
                }
                // Patch this client's ack into the shared message: one contiguous send, no copy.
                let ack = ack_bytes(enc, seat.ack_seq, &mut ack);
                let at = scratch.ack_at[e];
                scratch.messages[e][at..at + ack.len()].copy_from_slice(ack);
                let Some(mut out) = Outgoing::new(&mut scratch.messages[e]) else { continue };
                let bytes = out.message().len() as u64;
                match link.send(&mut out) {
                    Delivery::Sent | Delivery::Queued => {
                        stats.delivered += 1;
                        stats.messages += 1;
                        stats.bytes += bytes;
                        scratch.marks.push((i, SeatMark::Delivered));
                    }
                    Delivery::Full => scratch.marks.push((i, SeatMark::Lagging)),
                    Delivery::Closed => {}
                }
            }
            LagAction::Snapshot => {
                if send_msg(link, &ServerMsg::Snapshot(room.snapshot_for(i))).accepted() {
                    scratch.marks.push((i, SeatMark::Resynced));
                    stats.resynced += 1;
                    stats.delivered += 1;
                    stats.messages += 1;
                }
            }
            LagAction::Skip => {}
            LagAction::Drop => {
                link.close(close::SLOW_CONSUMER, "too slow to take updates");
                scratch.dropped.push((seat.bot, link.id()));
                stats.dropped += 1;
            }
        }
    }
    stats.encode_errors += encoded.iter().filter(|e| **e == Some(false)).count() as u64;
    for (i, mark) in scratch.marks.drain(..) {
        match mark {
            SeatMark::Delivered => room.mark_delivered(i),
            SeatMark::Lagging => room.mark_lagging(i),
            SeatMark::Resynced => room.mark_resynced(i),
        }
    }
    for (bot, conn_id) in scratch.dropped.drain(..) {
        room.disconnect(bot, conn_id);
    }
}

/// Encode this tick's update of `room` in `enc` into the scratch message for `enc`, leaving
/// room for the fixed-width `ack_seq`. False when it could not be encoded.
fn encode_message<L>(enc: Encoding, room: &Room<L>, scratch: &mut TickScratch) -> bool {
    let e = enc.index();
    let changes = room.changes();
    scratch.head.clear();
    scratch.tail.clear();
    let result = encode_update(
        enc,
        room.tick(),
        &changes.changed,
        &changes.removed,
        &changes.events,
        &mut scratch.head,
        &mut scratch.tail,
    );
    if let Err(error) = result {
        tracing::error!(%error, tick = room.tick(), "could not encode an update; clients will resync");
        return false;
    }
    let message = &mut scratch.messages[e];
    message.clear();
    message.resize(HEADROOM, 0);
    message.extend_from_slice(&scratch.head);
    scratch.ack_at[e] = message.len();
    message.resize(message.len() + ack_len(enc), 0);
    message.extend_from_slice(&scratch.tail);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::RoomConfig;
    use crate::world::{World, WorldConfig};
    use arena_sdk::codec::decode_server;
    use arena_sdk::protocol::{Command, Event};
    use std::sync::{Arc, Mutex};

    /// What a recording link saw.
    #[derive(Debug, Default)]
    struct Seen {
        messages: Vec<ServerMsg>,
        full: bool,
        closed: Option<u16>,
    }

    /// A link that keeps what it is sent and can be told to be full.
    #[derive(Debug, Clone)]
    struct Recorder {
        id: u64,
        enc: Encoding,
        inner: Arc<Mutex<Seen>>,
    }

    impl Recorder {
        fn new(id: u64, enc: Encoding) -> Self {
            Recorder { id, enc, inner: Arc::new(Mutex::new(Seen::default())) }
        }
        fn full(&self, full: bool) {
            self.inner.lock().unwrap().full = full;
        }
        fn take(&self) -> Vec<ServerMsg> {
            std::mem::take(&mut self.inner.lock().unwrap().messages)
        }
    }

    impl Link for Recorder {
        fn id(&self) -> u64 {
            self.id
        }
        fn encoding(&self) -> Encoding {
            self.enc
        }
        fn send(&self, message: &mut Outgoing<'_>) -> Delivery {
            let mut g = self.inner.lock().unwrap();
            if g.full {
                return Delivery::Full;
            }
            g.messages.push(decode_server(self.enc, message.message()).unwrap());
            Delivery::Sent
        }
        fn is_drained(&self) -> bool {
            !self.inner.lock().unwrap().full
        }
        fn close(&self, code: u16, _: &str) {
            self.inner.lock().unwrap().closed = Some(code);
        }
    }

    #[test]
    fn each_client_gets_its_own_ack_and_a_lagging_one_gets_the_missed_chat() {
        let world = World::new(WorldConfig::default(), 7);
        let mut room = Room::new(world, RoomConfig { grace_ticks: 100, slow_client_ticks: 100 });
        let (a, b) = (Recorder::new(1, Encoding::MsgPack), Recorder::new(2, Encoding::Json));
        let bot_a = room.join("a", "ta".into(), 1, a.clone()).unwrap().bot;
        let bot_b = room.join("b", "tb".into(), 2, b.clone()).unwrap().bot;
        let (mut scratch, mut stats) = (TickScratch::default(), TickStats::default());
        let say = |bot, seq, text: &str| QueuedInput { bot, seq, command: Command::Say(text.into()) };
        tick_room(&mut room, &[say(bot_a, 3, "hi"), say(bot_b, 9, "yo")], &mut scratch, &mut stats);
        let acks = |r: &Recorder| {
            r.take().into_iter().map(|m| if let ServerMsg::Update(u) = m { u.ack_seq } else { 0 }).collect::<Vec<_>>()
        };
        assert_eq!(acks(&a), vec![3]);
        assert_eq!(acks(&b), vec![9]);
        // b cannot take the next update: it lags, and the chat of that tick waits for it.
        b.full(true);
        tick_room(&mut room, &[say(bot_a, 4, "missed by b")], &mut scratch, &mut stats);
        tick_room(&mut room, &[], &mut scratch, &mut stats);
        b.full(false);
        tick_room(&mut room, &[], &mut scratch, &mut stats);
        let got = b.take();
        let [ServerMsg::Snapshot(snap)] = got.as_slice() else { panic!("expected one snapshot, got {got:?}") };
        assert!(snap.events.iter().any(|e| matches!(e, Event::Say { text, .. } if text == "missed by b")));
        assert_eq!(snap.tick, room.tick());
        assert_eq!(stats.resynced, 1);
        assert_eq!(stats.inputs, 3);
        assert_eq!(a.take().len(), 3, "a got every update");
    }

    #[test]
    fn a_client_backed_up_too_long_is_dropped_and_keeps_its_seat() {
        let world = World::new(WorldConfig::default(), 7);
        let mut room = Room::new(world, RoomConfig { grace_ticks: 100, slow_client_ticks: 3 });
        let a = Recorder::new(1, Encoding::MsgPack);
        let bot = room.join("a", "t".into(), 1, a.clone()).unwrap().bot;
        let (mut scratch, mut stats) = (TickScratch::default(), TickStats::default());
        a.full(true);
        for _ in 0..6 {
            tick_room(&mut room, &[], &mut scratch, &mut stats);
        }
        assert_eq!(a.inner.lock().unwrap().closed, Some(close::SLOW_CONSUMER));
        assert_eq!(stats.dropped, 1);
        assert!(room.seat(bot).is_some_and(|s| s.holder.is_none()), "kept for the grace period");
    }
}
