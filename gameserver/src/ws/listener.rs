//! The WebSocket listener: a deep accept backlog for connect storms, a connection permit taken
//! before each `accept` (past the cap, connections wait in the backlog), one task per connection
//! in a tracker the drain waits on.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::host::Host;
use crate::ws::reader;

/// Bind `addr` with a listen backlog of `backlog` (tokio's default is 128, which drops
/// connections when thousands of bots connect at once).
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Accept connections until `stop` is cancelled; each connection's task is tracked by
/// `connections` and told to close by `drain`. With `tls`, connections must speak TLS (`wss://`).
pub async fn accept_loop(
    listener: TcpListener,
    host: Arc<Host>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
    drain: CancellationToken,
    connections: TaskTracker,
) {
    let tls = tls.map(TlsAcceptor::from);
    loop {
        let permit = tokio::select! {
            p = host.admission().connection_permit() => p,
            () = stop.cancelled() => return,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(reader::serve(stream, peer, Arc::clone(&host), tls.clone(), permit, drain.clone()));
                }
                Err(e) => {
                    // Out of file descriptors or a transient failure: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = stop.cancelled() => return,
        }
    }
}
