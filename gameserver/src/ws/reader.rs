//! The task that serves one WebSocket connection: a place among those waiting to join, the
//! handshake, then — in turns — read bytes, decode frames one at a time (`inbound.rs`), hand
//! them to the [`Session`], carry out its steps, flush what the socket would not take yet.
//!
//! Every limit holds per frame and per turn: one turn handles at most [`FRAMES_PER_TURN`]
//! frames and [`BYTES_PER_TURN`] bytes, then yields, so a client streaming frames as fast as it
//! can never keeps the thread from the world ticks; the join deadline, the drain and a close by
//! the server are checked at the start of every turn. Writes never wait here: they go straight
//! to the socket through [`Conn`]; this task only flushes what was queued, within the flush
//! deadline — a client that stops reading is closed hard and its descriptor freed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arena_sdk::protocol::{ErrorCode, ErrorMsg, MAX_CLIENT_FRAME_BYTES, close};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::admission::PendingSlot;
use crate::host::Host;
use crate::link::{ClientLink, Transport};
use crate::metrics::Metrics;
use crate::serving::{End, Serving, carry_out, close_with};
use crate::session::Session;
use crate::ws::frame;
use crate::ws::handshake;
use crate::ws::inbound::{Decoder, Frame, FrameError, MAX_HEADER};
use crate::ws::tls;
use crate::ws::writer::Conn;

/// Most frames handled in one turn before yielding.
pub const FRAMES_PER_TURN: usize = 16;
/// Most bytes read in one turn before yielding.
pub const BYTES_PER_TURN: usize = 16 * 1024;
/// After a close went out, how long to wait for the client's close (its FIN) before closing.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Serve one accepted TCP connection until it ends. `permit` is its place among the open
/// connections, given back when this returns. With `tls`, the connection must speak TLS.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    host: Arc<Host>,
    tls: Option<TlsAcceptor>,
    permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let _permit = permit;
    let metrics = Arc::clone(host.metrics());
    metrics.connections.inc();
    let pending = match host.admission().try_pending(peer.ip()) {
        Ok(slot) => slot,
        Err(shed) => {
            Metrics::count(&metrics.connections_shed, "reason", shed.label());
            shed_now(stream, shed.reason()).await;
            metrics.connections.dec();
            return;
        }
    };
    let cfg = host.config();
    let _ = stream.set_nodelay(true);
    if let Some(bytes) = cfg.socket_send_buffer {
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(bytes);
    }
    // A drain does not wait for connections that are still shaking hands.
    let accepted = tokio::select! {
        r = Box::pin(open(stream, tls.as_ref(), || shutdown.is_cancelled(), cfg.handshake_timeout)) => r,
        () = shutdown.cancelled() => Err(handshake::HandshakeError::Eof),
    };
    match accepted {
        Ok((stream, tls, accepted)) => {
            let conn =
                Conn::new(host.next_conn_id(), accepted.enc, stream, tls, cfg.max_queued_bytes, Arc::clone(&metrics));
            run(&conn, &host, accepted.leftover, Some(pending), &shutdown).await;
        }
        Err(e) => {
            Metrics::count(&metrics.handshakes_failed, "reason", e.label());
            tracing::debug!(error = %e, %peer, "handshake did not complete");
        }
    }
    metrics.connections.dec();
}

/// The handshake, within `limit`: TLS first when the listener has a certificate (a client that
/// speaks plain HTTP is told to use `wss://`), then the HTTP upgrade.
async fn open(
    mut stream: TcpStream,
    tls: Option<&TlsAcceptor>,
    draining: impl Fn() -> bool,
    limit: Duration,
) -> Result<(TcpStream, Option<Box<tls::Session>>, handshake::Accepted), handshake::HandshakeError> {
    use handshake::HandshakeError;
    let Some(acceptor) = tls else {
        let accepted = handshake::accept(&mut stream, draining, limit).await?;
        return Ok((stream, None, accepted));
    };
    let deadline = Instant::now() + limit;
    let secured = tokio::time::timeout_at(deadline, async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 0 {
            return Err(HandshakeError::Eof);
        }
        if !tls::starts_tls(first[0]) {
            answer_and_close(stream, &tls::plain_refusal()).await;
            return Err(HandshakeError::NotTls);
        }
        acceptor.accept(stream).await.map_err(HandshakeError::Tls)
    })
    .await
    .map_err(|_| HandshakeError::Timeout(limit))??;
    let mut secured = secured;
    let accepted =
        handshake::accept(&mut secured, draining, deadline.saturating_duration_since(Instant::now())).await?;
    let (stream, session) = secured.into_inner();
    Ok((stream, Some(tls::Session::new(session)), accepted))
}

/// Answer 503 at once (the request is not even read), then close cleanly.
async fn shed_now(stream: TcpStream, reason: &str) {
    answer_and_close(stream, &handshake::shed_response(reason)).await;
}

/// Write `response`, then close cleanly, within a second.
async fn answer_and_close(mut stream: TcpStream, response: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes too, so the socket ends with FIN, not RST.
        let mut sink = [0u8; 1024];
        loop {
            stream.readable().await?;
            match stream.try_read(&mut sink) {
                Ok(0) => return Ok::<(), io::Error>(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
}

/// What the read side needs between turns.
struct Reading {
    buf: BytesMut,
    decoder: Decoder,
    serving: Serving,
}

async fn run(
    conn: &Arc<Conn>,
    host: &Arc<Host>,
    leftover: Vec<u8>,
    pending: Option<PendingSlot>,
    shutdown: &CancellationToken,
) {
    let cfg = host.config();
    let metrics = host.metrics();
    // Room for one whole frame of the largest size, whatever the configured buffer.
    let cap = cfg.read_buffer_bytes.max(MAX_CLIENT_FRAME_BYTES + MAX_HEADER);
    let mut buf = BytesMut::with_capacity(cap.max(leftover.len()));
    buf.extend_from_slice(&leftover);
    // TLS: what rustls decrypted during the handshake and the upgrade did not read.
    if conn.take_plaintext(&mut buf).is_err() {
        return;
    }
    let link: ClientLink = Arc::clone(conn) as ClientLink;
    let mut r = Reading {
        buf,
        decoder: Decoder::new(MAX_CLIENT_FRAME_BYTES),
        serving: Serving::new(Session::new(conn.encoding(), cfg.limits, host.now()), pending),
    };
    let join_deadline = Instant::now() + cfg.join_timeout;

    let end = loop {
        if conn.is_broken() {
            break End::Dropped;
        }
        if conn.is_closed() {
            break End::ClosedByServer;
        }
        if shutdown.is_cancelled() {
            conn.close(close::GOING_AWAY, "server draining");
            break End::ClosedByServer;
        }
        if r.serving.seat.is_none() && Instant::now() >= join_deadline {
            let error =
                ErrorMsg { code: ErrorCode::NotJoined, message: format!("no join within {:?}", cfg.join_timeout) };
            close_with(&link, metrics, error, close::JOIN_TIMEOUT, "join_timeout");
            break End::ClosedByServer;
        }

        // Frames already buffered, at most a turn's worth.
        let mut frames = 0;
        let mut ended = None;
        while frames < FRAMES_PER_TURN {
            let decoded = r.decoder.decode(&mut r.buf);
            match decoded {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    frames += 1;
                    let step = match frame {
                        Frame::Message { binary, payload } => {
                            Some(r.serving.session.on_frame(binary, payload, host.now()))
                        }
                        Frame::Ping(payload) => match r.serving.session.on_partial_frame(host.now()) {
                            None => {
                                conn.send_frame(&frame::pong_frame(payload));
                                None
                            }
                            violation => violation,
                        },
                        Frame::Pong | Frame::Fragment => r.serving.session.on_partial_frame(host.now()),
                        Frame::Close { code, .. } => {
                            conn.echo_close(code);
                            ended = Some(End::Left);
                            break;
                        }
                    };
                    if let Some(step) = step
                        && let Some(end) = carry_out(step, &link, host, &mut r.serving).await
                    {
                        ended = Some(end);
                        break;
                    }
                }
                Err(e) => {
                    refuse_frame(&link, metrics, &e);
                    ended = Some(End::ClosedByServer);
                    break;
                }
            }
        }
        if let Some(end) = ended {
            break end;
        }
        if frames == FRAMES_PER_TURN {
            tokio::task::yield_now().await;
            continue;
        }

        // Read what the socket holds, at most a turn's worth.
        match read_turn(conn, &mut r.buf, cap) {
            Ok(ReadTurn::Read) => {
                tokio::task::yield_now().await;
                continue;
            }
            Ok(ReadTurn::Eof) => break End::Dropped,
            Ok(ReadTurn::WouldBlock) => {}
            Err(_) => break End::Dropped,
        }
        if conn.wants_write() && conn.flush().is_err() {
            break End::Dropped;
        }

        // Nothing to do until the socket or the server says so. (An open connection that lags is
        // the room's to resync or drop; the flush deadline governs a closing one, below.)
        tokio::select! {
            ready = conn.stream().readable() => if ready.is_err() { break End::Dropped },
            ready = conn.stream().writable(), if conn.wants_write() => {
                if ready.is_err() || conn.flush().is_err() { break End::Dropped }
            }
            () = conn.woken() => {}
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep_until(join_deadline), if r.serving.seat.is_none() => {}
        }
    };

    r.serving.end(end, conn.id());
    drop(r);
    if end != End::Dropped {
        // Boxed, like a join: its buffers are needed once, at the end.
        Box::pin(finish(conn, metrics, cfg.flush_timeout)).await;
    }
}

enum ReadTurn {
    Read,
    WouldBlock,
    Eof,
}

/// Read from the socket into `buf` (up to `cap` bytes buffered, [`BYTES_PER_TURN`] per turn).
fn read_turn(conn: &Conn, buf: &mut BytesMut, cap: usize) -> io::Result<ReadTurn> {
    use bytes::BufMut;
    if conn.is_tls() {
        return read_turn_tls(conn, buf, cap);
    }
    let mut read = 0;
    while read < BYTES_PER_TURN && buf.len() < cap {
        let room = cap - buf.len();
        buf.reserve(room);
        match conn.stream().try_read_buf(&mut (&mut *buf).limit(room)) {
            Ok(0) => return Ok(if read == 0 { ReadTurn::Eof } else { ReadTurn::Read }),
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(if read == 0 { ReadTurn::WouldBlock } else { ReadTurn::Read });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(ReadTurn::Read)
}

/// [`read_turn`] for a TLS connection: records from the socket, decrypted into `buf` (at most a
/// read's worth past `cap`). The client's close_notify ends the connection as its EOF would.
fn read_turn_tls(conn: &Conn, buf: &mut BytesMut, cap: usize) -> io::Result<ReadTurn> {
    let before = buf.len();
    let closed = conn.take_plaintext(buf)?;
    if buf.len() > before {
        return Ok(ReadTurn::Read);
    }
    if closed {
        return Ok(ReadTurn::Eof);
    }
    let mut cipher = [0u8; 8 * 1024];
    let mut read = 0;
    while read < BYTES_PER_TURN && buf.len() < cap {
        match conn.stream().try_read(&mut cipher) {
            Ok(0) => return Ok(if read == 0 { ReadTurn::Eof } else { ReadTurn::Read }),
            Ok(n) => {
                read += n;
                if conn.open(&cipher[..n], buf)? {
                    // Frames before the close_notify are handled first; the next turn ends.
                    return Ok(ReadTurn::Read);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(if read == 0 { ReadTurn::WouldBlock } else { ReadTurn::Read });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(ReadTurn::Read)
}

/// A frame the connection cannot survive: say why and close with its code.
fn refuse_frame(link: &ClientLink, metrics: &Metrics, e: &FrameError) {
    let (code, label) = match e {
        FrameError::TooLarge(_) => (ErrorCode::FrameTooLarge, "frame_too_large"),
        FrameError::InvalidUtf8 => (ErrorCode::Malformed, "invalid_utf8"),
        FrameError::Protocol(_) => (ErrorCode::ProtocolError, "protocol_error"),
    };
    close_with(link, metrics, ErrorMsg { code, message: e.to_string() }, e.close_code(), label);
}

/// After a close (ours, or our echo of the client's): flush what is queued and the close frame
/// (within the flush deadline `limit`: a client that takes nothing is closed hard, its
/// descriptor freed), then read until the client closes too (within [`CLOSE_LINGER`]), so the
/// socket ends with FIN rather than a reset that could destroy the close frame in flight.
async fn finish(conn: &Arc<Conn>, metrics: &Metrics, limit: Duration) {
    let mut deadline = Instant::now() + limit;
    let mut flushed = false;
    let mut sink = [0u8; 1024];
    loop {
        if conn.wants_write() && conn.flush().is_err() {
            return;
        }
        if !flushed && !conn.wants_write() {
            flushed = true;
            deadline = deadline.min(Instant::now() + CLOSE_LINGER);
        }
        match conn.stream().try_read(&mut sink) {
            Ok(0) if !conn.wants_write() => return,
            Ok(0) => {}
            Ok(_) => {
                tokio::task::consume_budget().await;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        tokio::select! {
            ready = conn.stream().readable() => if ready.is_err() { return },
            ready = conn.stream().writable(), if conn.wants_write() => if ready.is_err() { return },
            () = tokio::time::sleep_until(deadline) => {
                if conn.wants_write() {
                    Metrics::count(&metrics.clients_dropped, "reason", "flush_timeout");
                }
                conn.close_hard();
                return;
            }
        }
    }
}
