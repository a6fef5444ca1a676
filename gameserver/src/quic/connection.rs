//! One QUIC connection: its control stream, a bounded outbound queue, and the task that serves
//! it.
//!
//! The mapping (`docs/protocol.md`, QUIC): the client opens one bidirectional stream, the
//! control stream; every `arena.v1` message in either direction is a frame on it — a 4-byte
//! big-endian length, then the message in the encoding ALPN chose. Per-tick updates travel on it
//! too, in order, so a client's world mirror works exactly as over WebSocket (no datagrams: an
//! update is a delta on the previous tick, and a lost datagram would cost a resync snapshot).
//!
//! Writes never wait in the tick: [`QuicConn::send`] queues the framed message (capped at
//! `max_queued` bytes: past it the message is refused and the room resynchronises or drops the
//! client) and wakes the connection's writer, which feeds quinn's stream as the peer's flow
//! control allows. Reads are charged frame by frame: a length over the limit is refused before
//! its payload is read.

use std::collections::VecDeque;
use std::sync::Arc;

use arena_sdk::Encoding;
use arena_sdk::protocol::{ErrorCode, ErrorMsg, MAX_CLIENT_FRAME_BYTES, close};
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::host::Host;
use crate::link::{ClientLink, Delivery, Outgoing, Transport};
use crate::metrics::Metrics;
use crate::serving::{End, Serving, carry_out, close_with};
use crate::session::Session;

/// The length in front of every frame.
pub const LENGTH_BYTES: usize = 4;
/// The application close code of a client that leaves (WebSocket's normal closure).
pub const LEAVE_CODE: u32 = close::NORMAL as u32;

#[derive(Debug, Default)]
struct Outbound {
    queue: VecDeque<Bytes>,
    /// Bytes queued, and being written.
    bytes: usize,
    /// A frame is being written (the peer's flow control may hold it).
    writing: bool,
    /// The server closed the connection: the code and reason, sent after what is queued.
    closed: Option<(u16, String)>,
    broken: bool,
}

/// The writing side of a QUIC connection, as the worlds hold it.
#[derive(Debug)]
pub struct QuicConn {
    id: u64,
    enc: Encoding,
    max_queued: usize,
    out: Mutex<Outbound>,
    /// Wakes the writer: a frame was queued, or the connection closed.
    wake: Notify,
    /// Tells the reader the server closed the connection, or it broke.
    closing: CancellationToken,
    /// Tells the writer to stop at once, even mid-write: the connection broke or the client left.
    gone: CancellationToken,
    metrics: Arc<Metrics>,
}

impl QuicConn {
    pub fn new(id: u64, enc: Encoding, max_queued: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(QuicConn {
            id,
            enc,
            max_queued,
            out: Mutex::new(Outbound::default()),
            wake: Notify::new(),
            closing: CancellationToken::new(),
            gone: CancellationToken::new(),
            metrics,
        })
    }

    fn is_closed(&self) -> bool {
        let out = self.out.lock();
        out.closed.is_some() || out.broken
    }

    fn broke(&self) {
        let mut out = self.out.lock();
        out.broken = true;
        self.metrics.outbound_queued_bytes.dec_by(out.bytes as i64);
        out.bytes = 0;
        out.queue.clear();
        drop(out);
        self.wake.notify_one();
        self.closing.cancel();
        self.gone.cancel();
    }

    /// What to write next: a frame, or — once everything is written — the close, or nothing.
    fn next(&self) -> Next {
        let mut out = self.out.lock();
        if out.broken {
            return Next::Stop;
        }
        if let Some(frame) = out.queue.pop_front() {
            out.writing = true;
            return Next::Frame(frame);
        }
        match &out.closed {
            Some((code, reason)) => Next::Close(*code, reason.clone()),
            None => Next::Wait,
        }
    }

    /// The close the server asked for, if any.
    fn close_asked(&self) -> Option<(u16, String)> {
        self.out.lock().closed.clone()
    }

    fn wrote(&self, n: usize) {
        let mut out = self.out.lock();
        out.writing = false;
        if out.broken {
            // `broke` already gave back everything queued, this frame included.
            return;
        }
        out.bytes = out.bytes.saturating_sub(n);
        self.metrics.outbound_queued_bytes.dec_by(n as i64);
    }
}

enum Next {
    Frame(Bytes),
    Close(u16, String),
    Wait,
    Stop,
}

impl Transport for QuicConn {
    fn id(&self) -> u64 {
        self.id
    }

    fn encoding(&self) -> Encoding {
        self.enc
    }

    fn send(&self, message: &mut Outgoing<'_>) -> Delivery {
        let Ok(len) = u32::try_from(message.message().len()) else { return Delivery::Full };
        let framed = message.with_prefix(&len.to_be_bytes());
        let mut out = self.out.lock();
        if out.closed.is_some() || out.broken {
            return Delivery::Closed;
        }
        if out.bytes + framed.len() > self.max_queued {
            return Delivery::Full;
        }
        out.bytes += framed.len();
        out.queue.push_back(Bytes::copy_from_slice(framed));
        drop(out);
        self.metrics.outbound_queued_bytes.inc_by(framed.len() as i64);
        self.wake.notify_one();
        Delivery::Queued
    }

    fn is_drained(&self) -> bool {
        let out = self.out.lock();
        out.queue.is_empty() && !out.writing
    }

    fn close(&self, code: u16, reason: &str) {
        let mut out = self.out.lock();
        if out.closed.is_none() {
            out.closed = Some((code, reason.to_owned()));
        }
        drop(out);
        self.wake.notify_one();
        self.closing.cancel();
    }
}

/// Feed the control stream from the queue until the connection closes or breaks; a close goes
/// out after everything queued before it.
async fn write_loop(conn: Arc<QuicConn>, mut send: quinn::SendStream, connection: quinn::Connection) {
    loop {
        match conn.next() {
            Next::Frame(frame) => {
                let n = frame.len();
                let written = tokio::select! {
                    w = send.write_chunk(frame) => w,
                    () = conn.gone.cancelled() => return,
                };
                if written.is_err() {
                    // The client stopped or reset the stream, or the connection is gone.
                    conn.broke();
                    return;
                }
                conn.wrote(n);
            }
            Next::Close(code, reason) => {
                // A connection's close abandons what its streams have not delivered: finish the
                // stream and wait until the client has it all (the error before the close), then
                // close. The caller bounds this by the flush deadline.
                if send.finish().is_ok() {
                    tokio::select! {
                        _ = send.stopped() => {}
                        () = conn.gone.cancelled() => {}
                    }
                }
                connection.close(quinn::VarInt::from_u32(u32::from(code)), reason.as_bytes());
                return;
            }
            Next::Stop => return,
            Next::Wait => conn.wake.notified().await,
        }
    }
}

/// A frame the client sent: its message, or why the connection cannot go on.
enum Read {
    Message(Vec<u8>),
    /// The client finished its stream or closed the connection.
    Ended(End),
    TooLarge(usize),
}

/// How a read of the control stream failed: the client closed the connection with `1000` (it
/// left: its seat is freed), or anything else (the seat is kept for the grace period).
fn ended(e: quinn::ReadExactError) -> Read {
    match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(
            quinn::ConnectionError::ApplicationClosed(c),
        )) if c.error_code.into_inner() == u64::from(LEAVE_CODE) => Read::Ended(End::Left),
        // A finished or reset stream, a lost connection, any other close.
        _ => Read::Ended(End::Dropped),
    }
}

/// Read one frame, refusing a length over [`MAX_CLIENT_FRAME_BYTES`] before reading its payload.
async fn read_frame(recv: &mut quinn::RecvStream) -> Read {
    let mut len = [0u8; LENGTH_BYTES];
    if let Err(e) = recv.read_exact(&mut len).await {
        return ended(e);
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_CLIENT_FRAME_BYTES {
        return Read::TooLarge(len);
    }
    let mut payload = vec![0u8; len];
    match recv.read_exact(&mut payload).await {
        Ok(()) => Read::Message(payload),
        Err(e) => ended(e),
    }
}

/// Serve one incoming QUIC connection until it ends. `permit` is its place among the open
/// connections.
pub async fn serve(
    incoming: quinn::Incoming,
    host: Arc<Host>,
    permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let _permit = permit;
    let metrics = Arc::clone(host.metrics());
    let peer = incoming.remote_address();
    let pending = match host.admission().try_pending(peer.ip()) {
        Ok(slot) => slot,
        Err(shed) => {
            Metrics::count(&metrics.connections_shed, "reason", shed.label());
            incoming.refuse();
            return;
        }
    };
    metrics.connections.inc();
    let cfg = host.config();
    let join_deadline = Instant::now() + cfg.join_timeout;
    let handshake_deadline = Instant::now() + cfg.handshake_timeout.min(cfg.join_timeout);
    let handshake = async {
        let connection = incoming.accept().ok()?.await.ok()?;
        let enc = connection
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol)
            .and_then(|p| std::str::from_utf8(&p).ok().and_then(Encoding::from_subprotocol))?;
        Some((connection, enc))
    };
    let shaken = tokio::select! {
        h = tokio::time::timeout_at(handshake_deadline, handshake) => h.ok().flatten(),
        () = shutdown.cancelled() => None,
    };
    // The client opens the control stream first (by writing on it), within the join deadline.
    let opened = match shaken {
        None => None,
        Some((connection, enc)) => {
            let stream = tokio::select! {
                s = tokio::time::timeout_at(join_deadline, connection.accept_bi()) => match s {
                    Ok(Ok(s)) => Some(s),
                    Ok(Err(_)) => None,
                    Err(_) => {
                        Metrics::count(&metrics.clients_dropped, "reason", "join_timeout");
                        connection.close(quinn::VarInt::from_u32(u32::from(close::JOIN_TIMEOUT)), b"join_timeout");
                        None
                    }
                },
                () = shutdown.cancelled() => {
                    connection.close(quinn::VarInt::from_u32(u32::from(close::GOING_AWAY)), b"server draining");
                    None
                }
            };
            stream.map(|(send, recv)| (connection, enc, send, recv))
        }
    };
    if let Some((connection, enc, send, recv)) = opened {
        let conn = QuicConn::new(host.next_conn_id(), enc, cfg.max_queued_bytes, Arc::clone(&metrics));
        let writer = tokio::spawn(write_loop(Arc::clone(&conn), send, connection.clone()));
        let end = run(&conn, &host, recv, pending, join_deadline, &shutdown).await;
        if matches!(end, End::Left | End::Dropped) {
            // The client left or is gone: nothing more to send.
            conn.broke();
        }
        // What is queued, and the close, within the flush deadline; then the connection goes.
        let abort = writer.abort_handle();
        if tokio::time::timeout(cfg.flush_timeout, writer).await.is_err() {
            // The client takes nothing (its flow control holds the stream): drop what is queued.
            // The close itself is not held by flow control: it says why.
            Metrics::count(&metrics.clients_dropped, "reason", "flush_timeout");
            abort.abort();
            conn.broke();
        }
        // Every end is an explicit close with a code of docs/protocol.md §8 (a no-op when the
        // writer or the client closed it already).
        let (code, reason) = conn.close_asked().unwrap_or(match end {
            End::Left => (close::NORMAL, "left".to_owned()),
            End::Dropped | End::ClosedByServer => (close::PROTOCOL_ERROR, "the control stream ended".to_owned()),
        });
        connection.close(quinn::VarInt::from_u32(u32::from(code)), reason.as_bytes());
    }
    metrics.connections.dec();
}

async fn run(
    conn: &Arc<QuicConn>,
    host: &Arc<Host>,
    mut recv: quinn::RecvStream,
    pending: crate::admission::PendingSlot,
    join_deadline: Instant,
    shutdown: &CancellationToken,
) -> End {
    let cfg = host.config();
    let metrics = host.metrics();
    let link: ClientLink = Arc::clone(conn) as ClientLink;
    let mut serving = Serving::new(Session::new(conn.encoding(), cfg.limits, host.now()), Some(pending));
    let end = loop {
        if conn.is_closed() {
            break End::ClosedByServer;
        }
        let read = tokio::select! {
            read = read_frame(&mut recv) => read,
            () = conn.closing.cancelled() => break End::ClosedByServer,
            () = shutdown.cancelled() => {
                conn.close(close::GOING_AWAY, "server draining");
                break End::ClosedByServer;
            }
            () = tokio::time::sleep_until(join_deadline), if serving.seat.is_none() => {
                let error = ErrorMsg { code: ErrorCode::NotJoined, message: format!("no join within {:?}", cfg.join_timeout) };
                close_with(&link, metrics, error, close::JOIN_TIMEOUT, "join_timeout");
                break End::ClosedByServer;
            }
        };
        match read {
            Read::Message(payload) => {
                let step = serving.session.on_frame(conn.encoding().is_binary(), &payload, host.now());
                if let Some(end) = carry_out(step, &link, host, &mut serving).await {
                    break end;
                }
            }
            Read::Ended(end) => break end,
            Read::TooLarge(len) => {
                let error = ErrorMsg {
                    code: ErrorCode::FrameTooLarge,
                    message: format!("frame of {len} bytes: at most {MAX_CLIENT_FRAME_BYTES}"),
                };
                close_with(&link, metrics, error, close::MESSAGE_TOO_BIG, "frame_too_large");
                break End::ClosedByServer;
            }
        }
    };
    serving.end(end, conn.id());
    end
}
