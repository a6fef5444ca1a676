//! One swarm bot: join, then send inputs on an open-loop schedule and time their
//! acknowledgements, until told to stop. A lost connection resumes (or joins afresh).
//!
//! Latency is measured from the time an input was *scheduled*, not from when it was sent: if
//! the bot (or the machine) stalls, the stall counts against the latency instead of hiding it
//! (no coordinated omission).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arena_sdk::Encoding;
use arena_sdk::codec::{decode_server, encode};
use arena_sdk::protocol::{Act, ClientMsg, Command, Input, Move, ServerMsg};
use arena_sdk::rng::SplitMix64;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::peek::peek_update;
use crate::stats::{JoinTimes, Samples, Stats};
use crate::target::Target;
use crate::wsclient::{OP_BINARY, OP_TEXT, WsConn, WsError};

/// What every bot does.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub encoding: Encoding,
    /// Inputs per second per bot.
    pub inputs_per_sec: f64,
    /// Shares of move and say in the input mix; the rest are acts.
    pub move_share: f64,
    pub say_share: f64,
    /// Bots in a world (targets of interactions are drawn from 1..=this).
    pub bots_per_world: usize,
    pub connect_timeout: Duration,
    pub join_attempts: u32,
}

/// Shared by all bots.
#[derive(Debug)]
pub struct Swarm {
    pub target: Target,
    pub behaviour: Behaviour,
    pub stats: Arc<Stats>,
}

/// How a played session ended.
enum Ended {
    Stopped,
    Lost(String),
}

/// A seat the bot holds.
struct Seated {
    conn: WsConn,
    /// Where the seat is, for resuming.
    addr: SocketAddr,
    path: String,
    resume_token: String,
    ack_seq: u32,
    tick: u64,
}

fn frame_op(enc: Encoding) -> u8 {
    if enc.is_binary() { OP_BINARY } else { OP_TEXT }
}

fn error_kind(e: &WsError) -> String {
    match e {
        WsError::Io(io) => format!("io:{:?}", io.kind()),
        WsError::Refused(_) => "handshake_refused".into(),
        WsError::Closed(code) => format!("closed:{code}"),
        WsError::Eof => "connection_lost".into(),
        WsError::BadFrame(_) => "bad_frame".into(),
    }
}

impl Swarm {
    /// Run bot `idx` from `start` until `stop` turns true.
    pub async fn run_bot(self: Arc<Self>, idx: usize, start: Instant, mut stop: watch::Receiver<bool>) {
        tokio::time::sleep_until(start).await;
        let mut rng = SplitMix64::new(0x9e37_79b9 ^ idx as u64);
        let mut samples = Samples::default();
        let mut resume: Option<(String, SocketAddr, String)> = None;
        let mut seq = 0u32;
        let mut failures = 0u32;
        let stats = &self.stats;
        loop {
            if *stop.borrow() {
                break;
            }
            let seated = match resume.take() {
                Some((token, addr, path)) => match self.resume(&token, addr, &path).await {
                    Ok(s) => {
                        stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        stats.joined.fetch_add(1, Ordering::Relaxed);
                        Ok(s)
                    }
                    // The seat is gone: join afresh with a new ticket.
                    Err(_) => self.join(idx).await,
                },
                None => self.join(idx).await,
            };
            let mut seated = match seated {
                Ok(s) => s,
                Err(kind) => {
                    stats.error(kind);
                    failures += 1;
                    if failures >= self.behaviour.join_attempts {
                        break;
                    }
                    let backoff = Duration::from_millis(200 << failures.min(5)).mul_f64(0.5 + rng.next_f64());
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => continue,
                        _ = stop.changed() => break,
                    }
                }
            };
            failures = 0;
            seq = seq.max(seated.ack_seq);
            let ended = self.play(&mut seated, &mut seq, &mut rng, &mut samples, &mut stop).await;
            stats.joined.fetch_sub(1, Ordering::Relaxed);
            match ended {
                Ended::Stopped => {
                    // Leave: the seat is freed at once.
                    let _ = seated.conn.close(1000).await;
                    break;
                }
                Ended::Lost(kind) => {
                    stats.disconnects.fetch_add(1, Ordering::Relaxed);
                    stats.error(kind);
                    resume = Some((seated.resume_token.clone(), seated.addr, seated.path.clone()));
                }
            }
        }
        stats.flush(&mut samples);
    }

    /// Get a ticket, connect, join; time each phase.
    async fn join(&self, idx: usize) -> Result<Seated, String> {
        let b = &self.behaviour;
        let assignment = self.target.assign(idx).await.map_err(|e| format!("assign:{e}"))?;
        let connect_start = Instant::now();
        let mut conn = WsConn::connect(assignment.addr, &assignment.path, b.encoding.subprotocol(), b.connect_timeout)
            .await
            .map_err(|e| format!("connect:{}", error_kind(&e)))?;
        let connected = Instant::now();
        let join = ClientMsg::Join { ticket: assignment.ticket, world: Some(assignment.world) };
        conn_send(&mut conn, b.encoding, &join).await?;
        let seated = self.welcome(conn, assignment.addr, assignment.path).await?;
        let welcomed = Instant::now();
        self.stats.joined(JoinTimes {
            alloc: assignment.took,
            connect: connected - connect_start,
            welcome: welcomed - connected,
        });
        Ok(seated)
    }

    async fn resume(&self, token: &str, addr: SocketAddr, path: &str) -> Result<Seated, String> {
        let b = &self.behaviour;
        let mut conn = WsConn::connect(addr, path, b.encoding.subprotocol(), b.connect_timeout)
            .await
            .map_err(|e| format!("connect:{}", error_kind(&e)))?;
        conn_send(&mut conn, b.encoding, &ClientMsg::Resume { token: token.to_owned() }).await?;
        self.welcome(conn, addr, path.to_owned()).await
    }

    /// Wait for the `welcome` (or the refusal).
    async fn welcome(&self, mut conn: WsConn, addr: SocketAddr, path: String) -> Result<Seated, String> {
        let enc = self.behaviour.encoding;
        let deadline = Instant::now() + self.behaviour.connect_timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, conn.read_frame())
                .await
                .map_err(|_| "join:timeout".to_owned())?
                .map_err(|e| format!("join:{}", error_kind(&e)))?;
            match decode_server(enc, conn.payload(frame)) {
                Ok(ServerMsg::Welcome(w)) => {
                    return Ok(Seated {
                        conn,
                        addr,
                        path,
                        resume_token: w.resume_token,
                        ack_seq: w.ack_seq,
                        tick: w.tick,
                    });
                }
                Ok(ServerMsg::Error(e)) => return Err(format!("join_refused:{}", e.code.as_str())),
                Ok(_) => {}
                Err(e) => return Err(format!("decode:{e}")),
            }
        }
    }

    fn next_command(&self, rng: &mut SplitMix64, n: u32) -> Command {
        let b = &self.behaviour;
        let r = rng.next_f64();
        if r < b.move_share {
            Command::Move(Move::To([rng.next_f32() * 1000.0, rng.next_f32() * 1000.0]))
        } else if r < b.move_share + b.say_share {
            Command::Say(format!("hello number {n}"))
        } else if rng.next_u64().is_multiple_of(2) {
            Command::Act(Act { action: "wave".into(), target: None })
        } else {
            let target = rng.below(b.bots_per_world as u64) as u32 + 1;
            Command::Act(Act { action: "high_five".into(), target: Some(target) })
        }
    }

    async fn play(
        &self,
        seated: &mut Seated,
        seq: &mut u32,
        rng: &mut SplitMix64,
        samples: &mut Samples,
        stop: &mut watch::Receiver<bool>,
    ) -> Ended {
        let enc = self.behaviour.encoding;
        let interval = Duration::from_secs_f64(1.0 / self.behaviour.inputs_per_sec.max(0.001));
        let mut next_input = Instant::now() + interval.mul_f64(rng.next_f64());
        let mut next_flush = Instant::now() + Duration::from_millis(500 + rng.below(1000));
        let mut pending: VecDeque<(u32, Instant)> = VecDeque::with_capacity(8);
        let mut last_tick = Some(seated.tick);
        let mut last_arrival: Option<Instant> = None;
        let conn = &mut seated.conn;
        // Created once: a fresh timer and watch future per received update would cost more
        // than the update itself.
        let stopped = stop.changed();
        tokio::pin!(stopped);
        let timer = tokio::time::sleep_until(next_input);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                biased;
                _ = &mut stopped => {
                    self.stats.unacked.fetch_add(pending.len() as u64, Ordering::Relaxed);
                    return Ended::Stopped;
                }
                frame = conn.read_frame() => {
                    let frame = match frame {
                        Ok(f) => f,
                        Err(e) => {
                            self.stats.unacked.fetch_add(pending.len() as u64, Ordering::Relaxed);
                            return Ended::Lost(error_kind(&e));
                        }
                    };
                    let now = Instant::now();
                    let payload = conn.payload(frame);
                    if let Some(head) = peek_update(enc, payload) {
                        if last_tick.is_some_and(|t| head.tick != t + 1) {
                            samples.gap();
                        }
                        last_tick = Some(head.tick);
                        samples.update(payload.len(), last_arrival.map(|t| now - t));
                        last_arrival = Some(now);
                        while let Some(&(s, scheduled)) = pending.front() {
                            if s > head.ack_seq {
                                break;
                            }
                            samples.input_ack(now - scheduled);
                            pending.pop_front();
                        }
                    } else {
                        samples.other_message(payload.len());
                        match decode_server(enc, payload) {
                            Ok(ServerMsg::Snapshot(s)) => last_tick = Some(s.tick),
                            Ok(ServerMsg::Error(e)) => self.stats.error(format!("server_error:{}", e.code.as_str())),
                            Ok(_) => {}
                            Err(e) => self.stats.error(format!("decode:{e}")),
                        }
                    }
                    if now >= next_flush {
                        self.stats.flush(samples);
                        next_flush = now + Duration::from_secs(1);
                    }
                }
                () = &mut timer => {
                    *seq += 1;
                    let msg = ClientMsg::Input(Input::new(*seq, self.next_command(rng, *seq)));
                    let bytes = match encode(enc, &msg) {
                        Ok(b) => b,
                        Err(e) => return Ended::Lost(format!("encode:{e}")),
                    };
                    if let Err(e) = conn.send(frame_op(enc), &bytes).await {
                        return Ended::Lost(error_kind(&e));
                    }
                    samples.sent(bytes.len());
                    pending.push_back((*seq, next_input));
                    if pending.len() > 64 {
                        pending.pop_front();
                        self.stats.unacked.fetch_add(1, Ordering::Relaxed);
                    }
                    next_input += interval;
                    timer.as_mut().reset(next_input);
                }
            }
        }
    }
}

async fn conn_send(conn: &mut WsConn, enc: Encoding, msg: &ClientMsg) -> Result<(), String> {
    let bytes = encode(enc, msg).map_err(|e| format!("encode:{e}"))?;
    conn.send(frame_op(enc), &bytes).await.map_err(|e| format!("send:{}", error_kind(&e)))
}
