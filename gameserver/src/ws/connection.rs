//! The task that serves one WebSocket connection: handshake, then read frames, hand them to the
//! [`Session`] and carry out its steps. Writes never wait here: they go straight to the socket
//! through [`Conn`].

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use arena_sdk::protocol::{ErrorCode, ErrorMsg, MAX_CLIENT_FRAME_BYTES, ServerMsg, close};
use tokio::net::TcpStream;
use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::protocol::{Message, Role, WebSocketConfig, WebSocketContext};

use crate::host::{Host, Joined};
use crate::metrics::Metrics;
use crate::session::{Session, Step};
use crate::ws::conn::{Conn, ConnIo};
use crate::ws::handshake;

/// How a connection ended, which decides what happens to its seat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client sent a close frame: it left, the seat is freed.
    Left,
    /// The connection dropped: the seat is kept for the grace period.
    Dropped,
    /// The server closed it; the seat is kept (a replaced seat already has a new holder).
    ClosedByServer,
}

/// Serve one accepted TCP connection until it ends. `host.connection_opened()` was called for
/// it; this calls `connection_closed()`.
pub async fn serve(mut stream: TcpStream, host: Arc<Host>, conn_id: u64, peer: IpAddr) {
    // Counted as unjoined (by the listener) until it joins or ends.
    let mut unjoined = Some(peer);
    let cfg = host.config();
    let _ = stream.set_nodelay(true);
    if let Some(bytes) = cfg.socket_send_buffer {
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(bytes);
    }
    // A drain does not wait for connections that are still shaking hands.
    let mut drain = host.drain_signal();
    let accepted = tokio::select! {
        r = handshake::accept(&mut stream, || host.admission(), cfg.handshake_timeout) => r,
        () = crate::server::until_true(&mut drain) => Err(handshake::HandshakeError::Eof),
    };
    match accepted {
        Ok(accepted) => {
            let conn = Conn::new(conn_id, accepted.enc, stream, cfg.max_queued_bytes, Arc::clone(host.metrics()));
            run(&conn, &host, accepted.leftover, &mut unjoined).await;
        }
        Err(e) => tracing::debug!(error = %e, "handshake did not complete"),
    }
    if let Some(ip) = unjoined {
        host.unjoined_closed(ip);
    }
    host.connection_closed();
}

fn send_error(conn: &Arc<Conn>, metrics: &Metrics, error: ErrorMsg) {
    Metrics::count(&metrics.protocol_errors, "code", error.code.as_str());
    conn.send_msg(&ServerMsg::Error(error));
}

fn close_with(conn: &Arc<Conn>, metrics: &Metrics, error: ErrorMsg, code: u16, reason: &'static str) {
    send_error(conn, metrics, error);
    Metrics::count(&metrics.clients_dropped, "reason", reason);
    conn.close(code, reason);
}

async fn run(conn: &Arc<Conn>, host: &Arc<Host>, leftover: Vec<u8>, unjoined: &mut Option<IpAddr>) {
    let cfg = host.config();
    let metrics = host.metrics();
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(cfg.read_buffer_bytes)
        .write_buffer_size(0)
        .max_write_buffer_size(cfg.max_queued_bytes)
        .max_message_size(Some(MAX_CLIENT_FRAME_BYTES))
        .max_frame_size(Some(MAX_CLIENT_FRAME_BYTES));
    let mut ws = WebSocketContext::from_partially_read(leftover, Role::Server, Some(ws_config));
    let mut session = Session::new(conn.encoding(), cfg.limits, host.now());
    let mut seat: Option<Joined> = None;
    let join_deadline = tokio::time::Instant::now() + cfg.join_timeout;
    let mut drain = host.drain_signal();

    let end = loop {
        if conn.is_closed() {
            break End::ClosedByServer;
        }
        // Checked on every frame, not only when the socket is idle: a client that keeps the
        // socket busy must still be timed out and told about a drain.
        if *drain.borrow() {
            conn.close(close::GOING_AWAY, "server draining");
            break End::ClosedByServer;
        }
        if seat.is_none() && tokio::time::Instant::now() >= join_deadline {
            let error =
                ErrorMsg { code: ErrorCode::NotJoined, message: format!("no join within {:?}", cfg.join_timeout) };
            close_with(conn, metrics, error, close::JOIN_TIMEOUT, "join_timeout");
            break End::ClosedByServer;
        }
        // A busy socket never returns WouldBlock: give the rest of the runtime its turn.
        tokio::task::consume_budget().await;
        let frame = match ws.read(&mut ConnIo(conn)) {
            Ok(Message::Text(text)) => (false, bytes::Bytes::from(text)),
            Ok(Message::Binary(bin)) => (true, bin),
            Ok(Message::Close(_)) => break End::Left,
            // Pings and pongs cost a message of the rate limit like any other frame.
            Ok(Message::Ping(_) | Message::Pong(_)) => match session.on_control(host.now()) {
                None => continue,
                Some(step) => match carry_out(step, conn, host, &mut session, &mut seat).await {
                    Some(end) => break end,
                    None => continue,
                },
            },
            Ok(Message::Frame(_)) => continue,
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::select! {
                    ready = conn.stream().readable() => if ready.is_err() { break End::Dropped },
                    () = conn.closed() => {}
                    () = crate::server::until_true(&mut drain) => {
                        conn.close(close::GOING_AWAY, "server draining");
                        break End::ClosedByServer;
                    }
                    () = tokio::time::sleep_until(join_deadline), if seat.is_none() => {
                        let error = ErrorMsg {
                            code: ErrorCode::NotJoined,
                            message: format!("no join within {:?}", cfg.join_timeout),
                        };
                        close_with(conn, metrics, error, close::JOIN_TIMEOUT, "join_timeout");
                        break End::ClosedByServer;
                    }
                }
                continue;
            }
            Err(WsError::Capacity(e)) => {
                let error = ErrorMsg { code: ErrorCode::FrameTooLarge, message: format!("{e}") };
                close_with(conn, metrics, error, close::MESSAGE_TOO_BIG, "frame_too_large");
                break End::ClosedByServer;
            }
            Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => break End::Dropped,
            Err(WsError::Protocol(e)) => {
                let error = ErrorMsg { code: ErrorCode::ProtocolError, message: format!("{e}") };
                close_with(conn, metrics, error, close::PROTOCOL_ERROR, "protocol_error");
                break End::ClosedByServer;
            }
            Err(WsError::Utf8(_)) => {
                let error = ErrorMsg { code: ErrorCode::Malformed, message: "text frame is not UTF-8".into() };
                close_with(conn, metrics, error, close::INVALID_PAYLOAD, "invalid_utf8");
                break End::ClosedByServer;
            }
            Err(_) => break End::Dropped,
        };
        let step = session.on_frame(frame.0, &frame.1, host.now());
        if let Some(end) = carry_out(step, conn, host, &mut session, &mut seat).await {
            break end;
        }
        if seat.is_some()
            && let Some(ip) = unjoined.take()
        {
            host.unjoined_closed(ip);
        }
    };

    match end {
        End::Left => conn.finish(),
        End::Dropped | End::ClosedByServer => {}
    }
    if let Some(joined) = &seat {
        match end {
            End::Left => joined.cell.leave(joined.bot, conn.id()),
            End::Dropped | End::ClosedByServer => joined.cell.disconnect(joined.bot, conn.id()),
        }
    }
    if end == End::ClosedByServer {
        linger(conn, cfg.handshake_timeout.min(std::time::Duration::from_secs(2))).await;
    }
}

/// Carry out one session step; `Some` ends the connection.
async fn carry_out(
    step: Step,
    conn: &Arc<Conn>,
    host: &Arc<Host>,
    session: &mut Session,
    seat: &mut Option<Joined>,
) -> Option<End> {
    let metrics = host.metrics();
    let refused = |session: &mut Session, error: ErrorMsg| {
        Metrics::count(&metrics.joins, "result", error.code.as_str());
        match session.refuse(error) {
            Step::Close { error, code } => close_with(conn, metrics, error, code, "join_refused"),
            other => tracing::error!(?other, "refusal must close"),
        }
        Some(End::ClosedByServer)
    };
    match step {
        Step::Join { ticket, world } => {
            let joined = match host.check_ticket(&ticket, world.as_deref()) {
                Ok(claims) => host.join(&claims, conn).await,
                Err(e) => Err(e),
            };
            match joined {
                Ok(j) => {
                    Metrics::count(&metrics.joins, "result", "joined");
                    session.joined(j.ack_seq);
                    *seat = Some(j);
                    None
                }
                Err(error) => refused(session, error),
            }
        }
        Step::Resume { token } => match host.resume(&token, conn) {
            Ok(j) => {
                Metrics::count(&metrics.joins, "result", "resumed");
                session.joined(j.ack_seq);
                *seat = Some(j);
                None
            }
            Err(error) => refused(session, error),
        },
        Step::Input { seq, command } => {
            let joined = seat.as_ref()?;
            if joined.cell.push_input(joined.bot, seq, command, metrics).is_err() {
                let error =
                    ErrorMsg { code: ErrorCode::Busy, message: "world input queue is full; input dropped".into() };
                send_error(conn, metrics, error);
            }
            None
        }
        Step::Resync => {
            if let Some(joined) = seat.as_ref() {
                joined.cell.request_resync(joined.bot);
            }
            None
        }
        Step::Pong(nonce) => {
            conn.send_msg(&ServerMsg::Pong { nonce });
            None
        }
        Step::Error(error) => {
            send_error(conn, metrics, error);
            None
        }
        Step::Close { error, code } => {
            close_with(conn, metrics, error, code, "violations");
            Some(End::ClosedByServer)
        }
    }
}

/// After the server closed: read and discard until the client closes too (or a short deadline),
/// so the socket ends with FIN rather than a reset that could destroy the close frame in flight.
async fn linger(conn: &Arc<Conn>, limit: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut sink = [0u8; 1024];
    loop {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        match conn.stream().try_read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {
                tokio::task::consume_budget().await;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        tokio::select! {
            ready = conn.stream().readable() => if ready.is_err() { return },
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}
