//! Getting bots seated: allocate (or mint a ticket), connect, join — or, after a lost connection,
//! resume — timing each phase, retrying with backoff. Seated bots are handed to a play engine
//! (`engine.rs`); lost ones come back here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arena_sdk::Encoding;
use arena_sdk::codec::{decode_server, encode};
use arena_sdk::protocol::{Act, ClientMsg, Command, Move, ServerMsg};
use arena_sdk::rng::SplitMix64;
use tokio::time::Instant;

use crate::engine::{Player, Seat};
use crate::quicplay::{QuicClients, QuicPlayer};
use crate::stats::{JoinTimes, Stats};
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
    /// Refusals in a row before a bot gives up as refused.
    pub refusal_attempts: u32,
}

/// Shared by all bots.
#[derive(Debug)]
pub struct Swarm {
    pub target: Target,
    pub behaviour: Behaviour,
    pub stats: Arc<Stats>,
    /// Bots play over QUIC through these; over WebSocket without.
    pub quic: Option<QuicClients>,
}

/// A seated bot, on either transport.
#[derive(Debug)]
pub enum Seated {
    /// For a play engine (`engine.rs`).
    Ws(Player),
    /// For its own task (`quicplay::play`).
    Quic(QuicPlayer),
}

impl Seated {
    pub fn seat(&self) -> &Seat {
        match self {
            Seated::Ws(p) => &p.seat,
            Seated::Quic(p) => &p.seat,
        }
    }
}

/// The data frame opcode of an encoding.
pub fn frame_op(enc: Encoding) -> u8 {
    if enc.is_binary() { OP_BINARY } else { OP_TEXT }
}

/// Whether a lost connection was the server moving the bot's world: draining (1001), the world
/// placed elsewhere (4006), or its lease lost (4007) — "allocate again", not a failure.
pub fn moved(why: &str) -> bool {
    matches!(why, "closed:1001" | "closed:4006" | "closed:4007")
}

/// Whether a failed join was the fleet saying "no room now, retry" — the allocator's
/// `429 no_capacity`, `429 world_unavailable` (full, or moving off a draining server) or
/// `503 unavailable`, or the gameserver's `overloaded` — rather than an error.
pub fn refusal(kind: &str) -> bool {
    matches!(
        kind,
        "assign:refused:no_capacity"
            | "assign:refused:world_unavailable"
            | "assign:refused:unavailable"
            | "join_refused:overloaded"
            | "connect:handshake_refused"
    )
}

/// A short label for an error, for the errors-by-kind table.
pub fn error_kind(e: &WsError) -> String {
    match e {
        WsError::Io(io) => format!("io:{:?}", io.kind()),
        WsError::Refused(_) => "handshake_refused".into(),
        WsError::Closed(code) => format!("closed:{code}"),
        WsError::Eof => "connection_lost".into(),
        WsError::BadFrame(_) => "bad_frame".into(),
    }
}

async fn conn_send(conn: &mut WsConn, enc: Encoding, msg: &ClientMsg) -> Result<(), String> {
    let bytes = encode(enc, msg).map_err(|e| format!("encode:{e}"))?;
    conn.send(frame_op(enc), &bytes).await.map_err(|e| format!("send:{}", error_kind(&e)))
}

impl Swarm {
    /// Seat bot `idx` for the first time, at `start`. `None` when it gave up (errors counted) or
    /// the run stopped.
    pub async fn join_bot(self: Arc<Self>, idx: usize, start: Instant, stop: Arc<AtomicBool>) -> Option<Seated> {
        tokio::time::sleep_until(start).await;
        let rng = SplitMix64::new(0x9e37_79b9 ^ idx as u64);
        let player = self.seat_with_retries(idx, rng, 0, stop).await;
        if player.is_some() {
            self.stats.ever_joined.fetch_add(1, Ordering::Relaxed);
        }
        player
    }

    /// Get a lost bot back. Its world moved (`why` is a close 1001, 4006 or 4007, the server's
    /// "ask the allocator again"): allocate again at once. Its connection broke: resume its seat,
    /// or allocate again when the seat is gone. After a new allocation, the bot must have its
    /// own seat back (the same bot id): counted as kept or lost.
    pub async fn rejoin(self: Arc<Self>, seat: Seat, why: &str, stop: Arc<AtomicBool>) -> Option<Seated> {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        if !moved(why) {
            match self.resume(&seat).await {
                Ok(p) => {
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.stats.joined.fetch_add(1, Ordering::Relaxed);
                    return Some(p);
                }
                Err(kind) => self.stats.error(format!("resume:{kind}")),
            }
        }
        let (bot, seq) = (seat.bot, seat.seq);
        let player = self.seat_with_retries(seat.idx, seat.rng, seq, stop).await?;
        if player.seat().bot == bot {
            self.stats.seats_kept.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.seats_lost.fetch_add(1, Ordering::Relaxed);
        }
        Some(player)
    }

    /// Seat a bot, retrying: errors with backoff (each counted), refusals — the documented
    /// answers of a full or overloaded fleet — after the second the fleet asks to wait, until a
    /// few of them in a row make the bot give up as refused (counted once, not as an error).
    async fn seat_with_retries(&self, idx: usize, rng: SplitMix64, seq: u32, stop: Arc<AtomicBool>) -> Option<Seated> {
        use backon::BackoffBuilder;
        let mut delays = backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(6))
            .with_jitter()
            .without_max_times()
            .build();
        let (mut failures, mut refusals) = (0, 0);
        while failures < self.behaviour.join_attempts {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            match self.join(idx, rng.clone(), seq).await {
                Ok(p) => return Some(p),
                Err(kind) if refusal(&kind) => {
                    refusals += 1;
                    if refusals >= self.behaviour.refusal_attempts {
                        self.stats.refused(kind);
                        return None;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(kind) => {
                    failures += 1;
                    self.stats.error(kind);
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(6))).await;
                }
            }
        }
        None
    }

    /// Get a ticket, connect, join; time each phase.
    async fn join(&self, idx: usize, rng: SplitMix64, seq: u32) -> Result<Seated, String> {
        let b = &self.behaviour;
        let assignment = self.target.assign(idx).await.map_err(|e| format!("assign:{e}"))?;
        let join = ClientMsg::Join { ticket: assignment.ticket, world: Some(assignment.world) };
        let mut seat = Seat {
            idx,
            bot: 0,
            addr: assignment.addr,
            path: assignment.path,
            quic_pin: None,
            resume_token: String::new(),
            seq,
            tick: 0,
            rng,
        };
        let connect_start = Instant::now();
        let (player, connected) = match &self.quic {
            Some(clients) => {
                let (addr, pin) = assignment.quic.ok_or("assign:no_quic_endpoint")?;
                let mut conn =
                    clients.connect(addr, &pin, b.connect_timeout).await.map_err(|e| format!("connect:{e}"))?;
                let connected = Instant::now();
                conn.send(b.encoding, &join).await.map_err(|e| format!("send:{e}"))?;
                (seat.addr, seat.quic_pin) = (addr, Some(pin));
                let deadline = Instant::now() + b.connect_timeout;
                (Seated::Quic(conn.welcome(b.encoding, seat, deadline).await?), connected)
            }
            None => {
                let mut conn = WsConn::connect(seat.addr, &seat.path, b.encoding.subprotocol(), b.connect_timeout)
                    .await
                    .map_err(|e| format!("connect:{}", error_kind(&e)))?;
                let connected = Instant::now();
                conn_send(&mut conn, b.encoding, &join).await?;
                (Seated::Ws(self.welcome(conn, seat).await?), connected)
            }
        };
        self.stats.joined(JoinTimes {
            alloc: assignment.took,
            connect: connected - connect_start,
            welcome: Instant::now() - connected,
        });
        Ok(player)
    }

    async fn resume(&self, seat: &Seat) -> Result<Seated, String> {
        let b = &self.behaviour;
        let resume = ClientMsg::Resume { token: seat.resume_token.clone() };
        let seat = Seat {
            idx: seat.idx,
            bot: seat.bot,
            addr: seat.addr,
            path: seat.path.clone(),
            quic_pin: seat.quic_pin.clone(),
            resume_token: String::new(),
            seq: seat.seq,
            tick: 0,
            rng: seat.rng.clone(),
        };
        match (&self.quic, &seat.quic_pin) {
            (Some(clients), Some(pin)) => {
                let mut conn =
                    clients.connect(seat.addr, pin, b.connect_timeout).await.map_err(|e| format!("connect:{e}"))?;
                conn.send(b.encoding, &resume).await.map_err(|e| format!("send:{e}"))?;
                let deadline = Instant::now() + b.connect_timeout;
                Ok(Seated::Quic(conn.welcome(b.encoding, seat, deadline).await?))
            }
            _ => {
                let mut conn = WsConn::connect(seat.addr, &seat.path, b.encoding.subprotocol(), b.connect_timeout)
                    .await
                    .map_err(|e| format!("connect:{}", error_kind(&e)))?;
                conn_send(&mut conn, b.encoding, &resume).await?;
                Ok(Seated::Ws(self.welcome(conn, seat).await?))
            }
        }
    }

    /// Wait for the `welcome` (or the refusal), then hand over the connection.
    async fn welcome(&self, mut conn: WsConn, mut seat: Seat) -> Result<Player, String> {
        let enc = self.behaviour.encoding;
        let deadline = Instant::now() + self.behaviour.connect_timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, conn.read_frame())
                .await
                .map_err(|_| "join:timeout".to_owned())?
                .map_err(|e| format!("join:{}", error_kind(&e)))?;
            match decode_server(enc, conn.payload(frame)) {
                Ok(ServerMsg::Welcome(w)) => {
                    seat.resume_token = w.resume_token;
                    seat.bot = w.bot;
                    seat.seq = seat.seq.max(w.ack_seq);
                    seat.tick = w.tick;
                    let (stream, inbuf, outbuf) = conn.into_parts().map_err(|e| format!("io:{:?}", e.kind()))?;
                    return Ok(Player { seat, stream, inbuf, outbuf });
                }
                Ok(ServerMsg::Error(e)) => return Err(format!("join_refused:{}", e.code.as_str())),
                Ok(_) => {}
                Err(e) => return Err(format!("decode:{e}")),
            }
        }
    }

    /// The next input of the mix.
    pub fn next_command(&self, rng: &mut SplitMix64, n: u32) -> Command {
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
}
