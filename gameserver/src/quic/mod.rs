//! The QUIC transport: one UDP endpoint beside the WebSocket listener, the same `arena.v1`
//! messages, tickets, limits, resume and lag policy (`docs/protocol.md`, QUIC).
//!
//! - [`tls`]: the certificate (configured, or self-signed with its SHA-256 published) and the
//!   endpoint's configuration;
//! - [`connection`]: one connection's control stream, queue and task.

pub mod connection;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::host::Host;

/// A connection without a packet for this long is closed (clients ping well within it).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Unacknowledged bytes a connection may have in flight (or held by a client that stops
/// reading) at least; more when the connection's queue cap is larger.
pub const MIN_SEND_WINDOW: u64 = 64 * 1024;

/// Connection attempts waiting for the accept loop at most, and the bytes they may buffer.
pub const MAX_INCOMING: usize = 1024;
pub const INCOMING_BUFFER_TOTAL: u64 = 8 * 1024 * 1024;

/// Bind a QUIC endpoint on `addr` (UDP) with `identity`; `max_queued` is a connection's queue
/// cap, which also sizes its send window.
pub fn bind(addr: SocketAddr, identity: &tls::Identity, max_queued: usize) -> anyhow::Result<quinn::Endpoint> {
    let mut cfg = tls::server_config(identity, IDLE_TIMEOUT, (max_queued as u64).max(MIN_SEND_WINDOW))?;
    cfg.max_incoming(MAX_INCOMING).incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    Ok(arena_sdk::quic::endpoint(addr, Some(cfg))?)
}

/// Accept connections until `stop` is cancelled. A connection attempt from an address QUIC has
/// not validated gets a Retry first (a forged source address never gets further, nor an
/// amplified answer); a validated one past the connection cap, shared with WebSocket, is
/// refused at once. Each connection's task is tracked by `connections` and told to close by
/// `drain`.
pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    host: Arc<Host>,
    stop: CancellationToken,
    drain: CancellationToken,
    connections: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            () = stop.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        if !incoming.remote_address_validated() {
            if incoming.may_retry() {
                let _ = incoming.retry();
            } else {
                incoming.refuse();
            }
            continue;
        }
        let Some(permit) = host.admission().try_connection_permit() else {
            crate::metrics::Metrics::count(&host.metrics().connections_shed, "reason", "connections_full");
            incoming.refuse();
            continue;
        };
        connections.spawn(connection::serve(incoming, Arc::clone(&host), permit, drain.clone()));
    }
    // No new connections; those open finish their drain on their own tasks.
    endpoint.set_server_config(None);
}
