//! Bots over QUIC: a few client endpoints (one UDP socket each) carry every bot's connection, and
//! each seated bot plays in its own task on the control stream (`docs/protocol.md` §12: frames
//! of a 4-byte big-endian length and one message).
//!
//! The measurement is the WebSocket engine's: inputs on an open-loop schedule, latency from the
//! scheduled time to the first update whose `ack_seq` covers them, updates read with
//! [`peek_update`] rather than decoded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arena_sdk::Encoding;
use arena_sdk::codec::{decode_server, encode};
use arena_sdk::protocol::{ClientMsg, Input, ServerMsg, close};
use arena_sdk::quic::{Trust, client_config};
use tokio::time::Instant;

use crate::bot::Swarm;
use crate::engine::{Lost, Seat, Tracker};
use crate::stats::Samples;

/// Largest server frame accepted (a snapshot of a full world is a few KiB).
const MAX_FRAME: usize = 1 << 20;
/// Receive window per connection: a few seconds of updates.
const WINDOW: u32 = 256 * 1024;
/// Longest a frame may wait for the server's flow control.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC's transport error for a connection the server would not take.
const CONNECTION_REFUSED: u64 = 0x2;

/// The client endpoints every QUIC bot shares, and a client configuration per certificate pin.
#[derive(Debug)]
pub struct QuicClients {
    endpoints: Vec<quinn::Endpoint>,
    next: AtomicUsize,
    configs: parking_lot::Mutex<std::collections::HashMap<String, quinn::ClientConfig>>,
    encoding: Encoding,
}

impl QuicClients {
    /// `sockets` client endpoints on IPv4 (bots are spread over them in turn). Needs a tokio
    /// runtime.
    pub fn new(sockets: usize, encoding: Encoding) -> std::io::Result<Self> {
        let mut endpoints = Vec::new();
        for _ in 0..sockets.max(1) {
            endpoints.push(arena_sdk::quic::endpoint(([0, 0, 0, 0], 0).into(), None)?);
        }
        Ok(QuicClients {
            endpoints,
            next: AtomicUsize::new(0),
            configs: parking_lot::Mutex::new(Default::default()),
            encoding,
        })
    }

    fn config(&self, pin: &str) -> Result<quinn::ClientConfig, String> {
        if let Some(c) = self.configs.lock().get(pin) {
            return Ok(c.clone());
        }
        let trust = Trust::pinned_hex(pin).ok_or("bad_certificate_hash")?;
        let cfg = client_config(self.encoding, &trust, WINDOW).map_err(|e| format!("config:{e}"))?;
        self.configs.lock().insert(pin.to_owned(), cfg.clone());
        Ok(cfg)
    }

    /// Connect to `addr`, pinning its certificate, and open the control stream. Errors are
    /// short labels for the errors-by-kind table.
    pub async fn connect(&self, addr: SocketAddr, pin: &str, limit: Duration) -> Result<QuicConn, String> {
        let cfg = self.config(pin)?;
        let endpoint = &self.endpoints[self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len()];
        let connecting = endpoint.connect_with(cfg, addr, "localhost").map_err(|e| format!("quic:{e}"))?;
        let opened = async {
            let connection = connecting.await.map_err(|e| connection_error(&e))?;
            let (send, recv) = connection.open_bi().await.map_err(|e| connection_error(&e))?;
            Ok::<_, String>(QuicConn { connection, send, recv, inbox: Vec::new() })
        };
        tokio::time::timeout(limit, opened).await.map_err(|_| "timeout".to_owned())?
    }

    /// Wait (at most `limit` in all) until every connection's close has been sent.
    pub async fn wait_idle(&self, limit: Duration) {
        let all = async {
            for e in &self.endpoints {
                e.wait_idle().await;
            }
        };
        let _ = tokio::time::timeout(limit, all).await;
    }
}

/// A short label for why a connection ended: `closed:<code>` for the server's close (the
/// WebSocket close codes), `handshake_refused` for a connection the server would not take.
fn connection_error(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => format!("closed:{}", c.error_code.into_inner()),
        quinn::ConnectionError::ConnectionClosed(c) if u64::from(c.error_code) == CONNECTION_REFUSED => {
            "handshake_refused".into()
        }
        quinn::ConnectionError::TimedOut => "timeout".into(),
        quinn::ConnectionError::LocallyClosed => "locally_closed".into(),
        other => format!("quic:{other}"),
    }
}

/// An open connection and its control stream.
#[derive(Debug)]
pub struct QuicConn {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Bytes read, not yet a whole frame.
    inbox: Vec<u8>,
}

impl QuicConn {
    /// Send one message as a frame, within [`SEND_TIMEOUT`].
    pub async fn send(&mut self, enc: Encoding, msg: &ClientMsg) -> Result<usize, String> {
        let bytes = encode(enc, msg).map_err(|e| format!("encode:{e}"))?;
        self.send_frame(&bytes).await?;
        Ok(bytes.len())
    }

    async fn send_frame(&mut self, payload: &[u8]) -> Result<(), String> {
        let len = u32::try_from(payload.len()).map_err(|_| "encode:too_long".to_owned())?;
        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(payload);
        match tokio::time::timeout(SEND_TIMEOUT, self.send.write_all(&frame)).await {
            Err(_) => Err("send_timeout".into()),
            Ok(Err(quinn::WriteError::ConnectionLost(e))) => Err(connection_error(&e)),
            Ok(Err(other)) => Err(format!("quic:{other}")),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// The next whole frame's payload range in the inbox, if there is one.
    fn next_frame(&self) -> Result<Option<usize>, String> {
        if self.inbox.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.inbox[0], self.inbox[1], self.inbox[2], self.inbox[3]]) as usize;
        if len > MAX_FRAME {
            return Err("bad_frame".into());
        }
        Ok((self.inbox.len() >= 4 + len).then_some(len))
    }

    /// Read more bytes into the inbox (cancel-safe: quinn's `read` is).
    async fn fill(&mut self, chunk: &mut [u8]) -> Result<(), String> {
        match self.recv.read(chunk).await {
            Ok(Some(n)) => {
                self.inbox.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Ok(None) => Err(self.ended().await),
            Err(quinn::ReadError::ConnectionLost(e)) => Err(connection_error(&e)),
            Err(e) => Err(format!("quic:{e}")),
        }
    }

    /// Why the stream ended: the server finishes it just before its close.
    async fn ended(&self) -> String {
        match tokio::time::timeout(Duration::from_secs(2), self.connection.closed()).await {
            Ok(e) => connection_error(&e),
            Err(_) => "connection_lost".into(),
        }
    }

    /// Wait for the `welcome` (or the refusal) until `deadline`.
    pub async fn welcome(mut self, enc: Encoding, mut seat: Seat, deadline: Instant) -> Result<QuicPlayer, String> {
        let mut chunk = vec![0u8; 4096];
        loop {
            while let Some(len) = self.next_frame()? {
                let msg = decode_server(enc, &self.inbox[4..4 + len]);
                self.inbox.drain(..4 + len);
                match msg {
                    Ok(ServerMsg::Welcome(w)) => {
                        seat.resume_token = w.resume_token;
                        seat.bot = w.bot;
                        seat.seq = seat.seq.max(w.ack_seq);
                        seat.tick = w.tick;
                        return Ok(QuicPlayer { seat, conn: self });
                    }
                    Ok(ServerMsg::Error(e)) => return Err(format!("join_refused:{}", e.code.as_str())),
                    Ok(_) => {}
                    Err(e) => return Err(format!("decode:{e}")),
                }
            }
            tokio::time::timeout_at(deadline, self.fill(&mut chunk))
                .await
                .map_err(|_| "join:timeout".to_owned())?
                .map_err(|e| format!("join:{e}"))?;
        }
    }
}

/// A seated bot on QUIC.
#[derive(Debug)]
pub struct QuicPlayer {
    pub seat: Seat,
    conn: QuicConn,
}

/// Play until the run stops (leave with 1000) or the connection is lost (the seat goes to
/// `lost`, with why).
pub async fn play(
    swarm: Arc<Swarm>,
    player: QuicPlayer,
    lost: tokio::sync::mpsc::UnboundedSender<Lost>,
    stop: Arc<AtomicBool>,
) {
    let QuicPlayer { mut seat, mut conn } = player;
    let (enc, stats) = (swarm.behaviour.encoding, &swarm.stats);
    let interval = Duration::from_secs_f64(1.0 / swarm.behaviour.inputs_per_sec.max(0.001));
    let mut samples = Samples::default();
    let mut tracker = Tracker::new(seat.tick);
    let mut due = Instant::now() + interval.mul_f64(seat.rng.next_f64());
    let mut next_flush = Instant::now() + Duration::from_secs(1);
    let mut chunk = vec![0u8; 4096];
    let why = loop {
        if stop.load(Ordering::Relaxed) {
            break None;
        }
        // Every whole frame read so far (the join may have brought updates along).
        let now = Instant::now();
        let failed = loop {
            match conn.next_frame() {
                Ok(Some(len)) => {
                    tracker.received(enc, &conn.inbox[4..4 + len], now.into_std(), &mut samples, stats);
                    conn.inbox.drain(..4 + len);
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        if failed.is_some() {
            break failed;
        }
        if now >= next_flush {
            stats.flush(&mut samples);
            next_flush = now + Duration::from_secs(1);
        }
        if now >= due {
            seat.seq += 1;
            let command = swarm.next_command(&mut seat.rng, seat.seq);
            match conn.send(enc, &ClientMsg::Input(Input::new(seat.seq, command))).await {
                Ok(n) => tracker.sent(seat.seq, due.into_std(), n, &mut samples, stats),
                Err(e) => break Some(e),
            }
            due += interval;
            continue;
        }
        // Sleep until the next input at the latest; the stop flag is seen within a second.
        let wake = due.min(now + Duration::from_secs(1));
        tokio::select! {
            r = conn.fill(&mut chunk) => {
                if let Err(e) = r {
                    break Some(e);
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    };
    stats.flush(&mut samples);
    tracker.finish(stats);
    stats.joined.fetch_sub(1, Ordering::Relaxed);
    match why {
        Some(why) => {
            conn.connection.close(quinn::VarInt::from_u32(u32::from(close::GOING_AWAY)), b"lost");
            let _ = lost.send((seat, why));
        }
        None => conn.connection.close(quinn::VarInt::from_u32(u32::from(close::NORMAL)), b"leave"),
    }
}

/// Split `quic://host:port` into a socket address.
pub fn parse_quic_url(url: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let rest = url.strip_prefix("quic://").ok_or_else(|| format!("{url}: not a quic:// URL"))?;
    rest.to_socket_addrs().map_err(|e| format!("{url}: {e}"))?.next().ok_or_else(|| format!("{url}: no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_urls() {
        assert_eq!(parse_quic_url("quic://127.0.0.1:7443").unwrap(), "127.0.0.1:7443".parse().unwrap());
        assert!(parse_quic_url("ws://127.0.0.1:7443").is_err());
        assert!(parse_quic_url("quic://127.0.0.1").is_err());
    }
}
