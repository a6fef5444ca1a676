//! The play engine: one OS thread drives thousands of seated bots with a mio poll.
//!
//! Bots join on tokio (allocation over HTTP, connect, join) and are then handed here. The engine
//! does not block in `epoll_wait` waiting for each packet: it sleeps until the next batch
//! boundary (1 ms) or the next scheduled input, then collects every ready socket at once. A
//! thread that is not waiting in `epoll_wait` is not woken by each incoming packet, which on a
//! machine shared with the servers under test saves both sides a wake-up per update; the price is
//! at most one batch interval added to measured latencies (it makes them look worse, never
//! better).
//!
//! Inputs follow an open-loop schedule and their latency is measured from the scheduled time,
//! so a stalled bot cannot hide latency (no coordinated omission).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arena_sdk::Encoding;
use arena_sdk::codec::{decode_server, encode};
use arena_sdk::protocol::{ClientMsg, Input, ServerMsg};
use arena_sdk::rng::SplitMix64;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::bot::{Swarm, frame_op};
use crate::peek::peek_update;
use crate::stats::{Samples, Stats};
use crate::wsclient::{FrameBuf, FrameOut, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, WsError, close_code};

/// What a bot keeps across connections: where its seat is and how it numbers inputs.
#[derive(Debug)]
pub struct Seat {
    pub idx: usize,
    /// The bot's id in its world (from its last `welcome`; 0 before the first).
    pub bot: u32,
    /// Its server's WebSocket address and path, or (with `quic_pin`) its QUIC address.
    pub addr: SocketAddr,
    pub path: String,
    /// The certificate SHA-256 (hex) of its server's QUIC endpoint, for a bot on QUIC.
    pub quic_pin: Option<String>,
    pub resume_token: String,
    pub seq: u32,
    pub tick: u64,
    pub rng: SplitMix64,
}

/// A seated bot with its connection, handed to an engine.
#[derive(Debug)]
pub struct Player {
    pub seat: Seat,
    pub stream: std::net::TcpStream,
    pub inbuf: FrameBuf,
    pub outbuf: FrameOut,
}

/// Sent back when a connection is lost, with why.
pub type Lost = (Seat, String);

/// What a seated bot measures, whatever its transport: inputs awaiting acknowledgement (timed
/// from when they were due), the last tick (for gaps), when the last update came.
#[derive(Debug)]
pub struct Tracker {
    pending: VecDeque<(u32, Instant)>,
    last_tick: Option<u64>,
    last_arrival: Option<Instant>,
}

impl Tracker {
    /// A bot whose welcome was at `tick`.
    pub fn new(tick: u64) -> Self {
        Tracker { pending: VecDeque::with_capacity(4), last_tick: Some(tick), last_arrival: None }
    }

    /// One message from the server, received at `now`: an update is read with [`peek_update`]
    /// (acknowledging inputs), anything else decoded.
    pub fn received(&mut self, enc: Encoding, payload: &[u8], now: Instant, samples: &mut Samples, stats: &Stats) {
        let Some(head) = peek_update(enc, payload) else {
            samples.other_message(payload.len());
            match decode_server(enc, payload) {
                Ok(ServerMsg::Snapshot(s)) => self.last_tick = Some(s.tick),
                Ok(ServerMsg::Error(e)) => stats.error(format!("server_error:{}", e.code.as_str())),
                Ok(_) => {}
                Err(e) => stats.error(format!("decode:{e}")),
            }
            return;
        };
        if self.last_tick.is_some_and(|t| head.tick != t + 1) {
            samples.gap();
        }
        self.last_tick = Some(head.tick);
        samples.update(payload.len(), self.last_arrival.map(|t| now - t));
        self.last_arrival = Some(now);
        while let Some(&(s, scheduled)) = self.pending.front() {
            if s > head.ack_seq {
                break;
            }
            samples.input_ack(now - scheduled);
            self.pending.pop_front();
        }
    }

    /// Input `seq`, due at `due`, was sent (`bytes` long).
    pub fn sent(&mut self, seq: u32, due: Instant, bytes: usize, samples: &mut Samples, stats: &Stats) {
        samples.sent(bytes);
        self.pending.push_back((seq, due));
        if self.pending.len() > MAX_PENDING {
            self.pending.pop_front();
            stats.unacked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The bot is gone: its inputs still waiting count as unacknowledged.
    pub fn finish(self, stats: &Stats) {
        stats.unacked.fetch_add(self.pending.len() as u64, Ordering::Relaxed);
    }
}

struct Slot {
    seat: Seat,
    stream: TcpStream,
    inbuf: FrameBuf,
    outbuf: FrameOut,
    /// Bytes the socket did not take yet.
    unsent: Vec<u8>,
    tracker: Tracker,
    /// Distinguishes this occupant of the slot from earlier ones (stale timers).
    generation: u64,
}

const WAKER: Token = Token(usize::MAX);
/// Most inputs awaiting acknowledgement per bot.
const MAX_PENDING: usize = 64;

/// Handle to a running engine.
#[derive(Debug)]
pub struct EngineHandle {
    tx: parking_lot::Mutex<mpsc::Sender<Player>>,
    waker: Arc<Waker>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl EngineHandle {
    /// Give the engine a seated bot.
    pub fn add(&self, p: Player) {
        if self.tx.lock().send(p).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Wait for the engine to finish (after the stop flag was set).
    pub fn join(&self) {
        let _ = self.waker.wake();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

struct Engine {
    swarm: Arc<Swarm>,
    poll: Poll,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    generation: u64,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    incoming: mpsc::Receiver<Player>,
    lost: tokio::sync::mpsc::UnboundedSender<Lost>,
    stop: Arc<AtomicBool>,
    samples: Samples,
    interval: Duration,
    batch: Duration,
    scratch: Vec<u8>,
}

/// Start an engine thread.
pub fn start(
    swarm: Arc<Swarm>,
    lost: tokio::sync::mpsc::UnboundedSender<Lost>,
    stop: Arc<AtomicBool>,
    batch: Duration,
) -> io::Result<EngineHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, incoming) = mpsc::channel();
    let interval = Duration::from_secs_f64(1.0 / swarm.behaviour.inputs_per_sec.max(0.001));
    let mut engine = Engine {
        swarm,
        poll,
        slots: Vec::new(),
        free: Vec::new(),
        generation: 0,
        timers: BinaryHeap::new(),
        incoming,
        lost,
        stop,
        samples: Samples::default(),
        interval,
        batch,
        scratch: Vec::with_capacity(256),
    };
    let thread = std::thread::Builder::new().name("arena-swarm".into()).spawn(move || engine.run())?;
    Ok(EngineHandle { tx: parking_lot::Mutex::new(tx), waker, thread: parking_lot::Mutex::new(Some(thread)) })
}

enum Outcome {
    Keep,
    Lost(String),
}

impl Engine {
    fn run(&mut self) {
        let mut events = Events::with_capacity(4096);
        let mut next_flush = Instant::now() + Duration::from_millis(200);
        loop {
            if self.stop.load(Ordering::Relaxed) {
                self.leave_all();
                return;
            }
            let now = Instant::now();
            let mut wake = now + self.batch;
            if let Some(Reverse((t, _, _))) = self.timers.peek() {
                wake = wake.min(*t);
            }
            if wake > now {
                std::thread::sleep(wake - now);
            }
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::ZERO)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.swarm.stats.error(format!("poll:{:?}", e.kind()));
                }
                continue;
            }
            for ev in &events {
                match ev.token() {
                    WAKER => self.take_new(),
                    Token(i) => {
                        let mut outcome = Outcome::Keep;
                        if ev.is_writable() {
                            outcome = self.flush_unsent(i);
                        }
                        if matches!(outcome, Outcome::Keep) && (ev.is_readable() || ev.is_read_closed()) {
                            outcome = self.read(i);
                        }
                        if let Outcome::Lost(why) = outcome {
                            self.drop_slot(i, Some(why));
                        }
                    }
                }
            }
            self.take_new();
            self.send_due(Instant::now());
            if Instant::now() >= next_flush {
                self.swarm.stats.flush(&mut self.samples);
                next_flush = Instant::now() + Duration::from_millis(200);
            }
        }
    }

    fn take_new(&mut self) {
        while let Ok(p) = self.incoming.try_recv() {
            if p.stream.set_nonblocking(true).is_err() {
                self.lost(p.seat, "io:nonblocking".into());
                continue;
            }
            let mut stream = TcpStream::from_std(p.stream);
            let i = self.free.pop().unwrap_or_else(|| {
                self.slots.push(None);
                self.slots.len() - 1
            });
            if let Err(e) = self.poll.registry().register(&mut stream, Token(i), Interest::READABLE) {
                self.free.push(i);
                self.lost(p.seat, format!("io:register:{:?}", e.kind()));
                continue;
            }
            self.generation += 1;
            let mut seat = p.seat;
            let first = Instant::now() + self.interval.mul_f64(seat.rng.next_f64());
            self.timers.push(Reverse((first, i, self.generation)));
            self.slots[i] = Some(Slot {
                tracker: Tracker::new(seat.tick),
                seat,
                stream,
                inbuf: p.inbuf,
                outbuf: p.outbuf,
                unsent: Vec::new(),
                generation: self.generation,
            });
            // Bytes read during the join may already hold updates.
            if let Outcome::Lost(why) = self.read(i) {
                self.drop_slot(i, Some(why));
            }
        }
    }

    fn lost(&self, seat: Seat, why: String) {
        self.swarm.stats.joined.fetch_sub(1, Ordering::Relaxed);
        let _ = self.lost.send((seat, why));
    }

    fn drop_slot(&mut self, i: usize, why: Option<String>) {
        let Some(mut slot) = self.slots[i].take() else { return };
        let _ = self.poll.registry().deregister(&mut slot.stream);
        self.free.push(i);
        slot.tracker.finish(&self.swarm.stats);
        match why {
            Some(why) => self.lost(slot.seat, why),
            None => {
                self.swarm.stats.joined.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Read what is there and handle every complete frame.
    fn read(&mut self, i: usize) -> Outcome {
        let enc = self.swarm.behaviour.encoding;
        let Some(slot) = self.slots[i].as_mut() else { return Outcome::Keep };
        loop {
            let space = slot.inbuf.space();
            let want = space.len();
            match slot.stream.read(space) {
                Ok(0) => return Outcome::Lost("connection_lost".into()),
                Ok(n) => {
                    slot.inbuf.filled(n);
                    let now = Instant::now();
                    loop {
                        let frame = match slot.inbuf.next_frame() {
                            Ok(Some(f)) => f,
                            Ok(None) => break,
                            Err(e) => return Outcome::Lost(crate::bot::error_kind(&e)),
                        };
                        match frame.opcode {
                            OP_TEXT | OP_BINARY => {}
                            OP_CLOSE => {
                                let code = close_code(slot.inbuf.payload(frame));
                                return Outcome::Lost(crate::bot::error_kind(&WsError::Closed(code)));
                            }
                            OP_PING => {
                                let data = slot.inbuf.payload(frame).to_vec();
                                let bytes = slot.outbuf.frame(OP_PONG, &data).to_vec();
                                slot.unsent.extend_from_slice(&bytes);
                                continue;
                            }
                            _ => continue,
                        }
                        let payload = slot.inbuf.payload(frame);
                        slot.tracker.received(enc, payload, now, &mut self.samples, &self.swarm.stats);
                    }
                    // A short read means the socket is drained (and a later packet raises a new
                    // edge); a full one may have left more behind.
                    if n < want {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Outcome::Lost(format!("io:{:?}", e.kind())),
            }
        }
        if !self.slots[i].as_ref().is_some_and(|s| s.unsent.is_empty()) {
            return self.flush_unsent(i);
        }
        Outcome::Keep
    }

    fn flush_unsent(&mut self, i: usize) -> Outcome {
        let Some(slot) = self.slots[i].as_mut() else { return Outcome::Keep };
        while !slot.unsent.is_empty() {
            match slot.stream.write(&slot.unsent) {
                Ok(0) => return Outcome::Lost("connection_lost".into()),
                Ok(n) => {
                    slot.unsent.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = self.poll.registry().reregister(
                        &mut slot.stream,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    return Outcome::Keep;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Outcome::Lost(format!("io:{:?}", e.kind())),
            }
        }
        let _ = self.poll.registry().reregister(&mut slot.stream, Token(i), Interest::READABLE);
        Outcome::Keep
    }

    /// Send every input whose time has come.
    fn send_due(&mut self, now: Instant) {
        let enc = self.swarm.behaviour.encoding;
        while let Some(Reverse((due, i, generation))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            let live = self.slots[i].as_ref().is_some_and(|s| s.generation == generation);
            if !live {
                continue;
            }
            let outcome = {
                let Some(slot) = self.slots[i].as_mut() else { continue };
                slot.seat.seq += 1;
                let seq = slot.seat.seq;
                let command = self.swarm.next_command(&mut slot.seat.rng, seq);
                self.scratch.clear();
                match encode(enc, &ClientMsg::Input(Input::new(seq, command))) {
                    Ok(bytes) => {
                        let frame = slot.outbuf.frame(frame_op(enc), &bytes);
                        slot.unsent.extend_from_slice(frame);
                        slot.tracker.sent(seq, due, bytes.len(), &mut self.samples, &self.swarm.stats);
                        self.timers.push(Reverse((due + self.interval, i, generation)));
                        None
                    }
                    Err(e) => Some(format!("encode:{e}")),
                }
            };
            let outcome = match outcome {
                Some(why) => Outcome::Lost(why),
                None => self.flush_unsent(i),
            };
            if let Outcome::Lost(why) = outcome {
                self.drop_slot(i, Some(why));
            }
        }
    }

    /// Leave every world (close 1000: seats freed at once) and drop the connections.
    fn leave_all(&mut self) {
        for i in 0..self.slots.len() {
            if let Some(slot) = self.slots[i].as_mut() {
                let frame = slot.outbuf.frame(OP_CLOSE, &1000u16.to_be_bytes()).to_vec();
                let _ = slot.stream.write(&frame);
            }
            self.drop_slot(i, None);
        }
        self.swarm.stats.flush(&mut self.samples);
    }
}
