//! Serving one client connection, whatever carries it: the protocol [`Session`]'s steps carried
//! out against the [`Host`] — join, resume, inputs, resync, ping — its errors and closes, and
//! what a connection's end does to its seat. The WebSocket reader (`ws/reader.rs`) and the QUIC
//! connection (`quic/connection.rs`) decode frames their own way and hand whole messages here.

use std::sync::Arc;

use arena_sdk::protocol::{ErrorCode, ErrorMsg, ServerMsg};

use crate::admission::PendingSlot;
use crate::host::{Host, Seat};
use crate::link::{ClientLink, send_msg};
use crate::metrics::Metrics;
use crate::session::{Session, Step};

/// How a connection ended, which decides what happens to its seat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed it: it left, the seat is freed.
    Left,
    /// The connection dropped: the seat is kept for the grace period.
    Dropped,
    /// The server closed it; the seat is kept (a replaced seat already has a new holder).
    ClosedByServer,
}

/// A connection's protocol state between messages.
#[derive(Debug)]
pub struct Serving {
    pub session: Session,
    pub seat: Option<Seat>,
    /// Its place among the connections waiting to join, given back once seated.
    pub pending: Option<PendingSlot>,
}

impl Serving {
    pub fn new(session: Session, pending: Option<PendingSlot>) -> Self {
        Serving { session, seat: None, pending }
    }

    /// The connection ended `how`: free or keep its seat.
    pub fn end(&self, how: End, conn_id: u64) {
        if let Some(seat) = &self.seat {
            match how {
                End::Left => seat.cell.leave(seat.bot, conn_id),
                End::Dropped | End::ClosedByServer => seat.cell.disconnect(seat.bot, conn_id),
            }
        }
    }
}

/// Send an error message, counted.
pub fn send_error(link: &ClientLink, metrics: &Metrics, error: ErrorMsg) {
    Metrics::count(&metrics.protocol_errors, "code", error.code.as_str());
    send_msg(link, &ServerMsg::Error(error));
}

/// Send an error message, then close with `code`; counted as a client dropped for `reason`.
pub fn close_with(link: &ClientLink, metrics: &Metrics, error: ErrorMsg, code: u16, reason: &'static str) {
    send_error(link, metrics, error);
    Metrics::count(&metrics.clients_dropped, "reason", reason);
    link.close(code, reason);
}

/// Carry out one session step; `Some` ends the connection.
pub async fn carry_out(step: Step, link: &ClientLink, host: &Arc<Host>, r: &mut Serving) -> Option<End> {
    let metrics = host.metrics();
    let refused = |session: &mut Session, error: ErrorMsg| {
        Metrics::count(&metrics.joins, "result", error.code.as_str());
        match session.refuse(error) {
            Step::Close { error, code } => close_with(link, metrics, error, code, "join_refused"),
            other => tracing::error!(?other, "refusal must close"),
        }
        Some(End::ClosedByServer)
    };
    match step {
        // Boxed: a join's future is large and lives only while joining, not in every
        // connection's task for its whole life.
        Step::Join { ticket, world } => match Box::pin(host.join(&ticket, world.as_deref(), link)).await {
            Ok(seat) => {
                Metrics::count(&metrics.joins, "result", "joined");
                r.session.joined(seat.ack_seq);
                r.seat = Some(seat);
                // Seated: no longer among those waiting to join.
                r.pending = None;
                None
            }
            Err(error) => refused(&mut r.session, error),
        },
        Step::Resume { token } => match host.resume(&token, link) {
            Ok(seat) => {
                Metrics::count(&metrics.joins, "result", "resumed");
                r.session.joined(seat.ack_seq);
                r.seat = Some(seat);
                r.pending = None;
                None
            }
            Err(error) => refused(&mut r.session, error),
        },
        Step::Input { seq, command } => {
            let seat = r.seat.as_ref()?;
            if seat.cell.push_input(seat.bot, seq, command).is_err() {
                metrics.inputs_dropped.inc();
                let error =
                    ErrorMsg { code: ErrorCode::Busy, message: "world input queue is full; input dropped".into() };
                send_error(link, metrics, error);
            } else {
                metrics.inputs.inc();
                metrics.input_queue.inc();
            }
            None
        }
        Step::Resync => {
            if let Some(seat) = r.seat.as_ref() {
                seat.cell.request_resync(seat.bot);
            }
            None
        }
        Step::Pong(nonce) => {
            send_msg(link, &ServerMsg::Pong { nonce });
            None
        }
        Step::Error(error) => {
            send_error(link, metrics, error);
            None
        }
        Step::Close { error, code } => {
            close_with(link, metrics, error, code, "violations");
            Some(End::ClosedByServer)
        }
    }
}
