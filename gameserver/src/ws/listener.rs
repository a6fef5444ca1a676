//! The WebSocket listener: a deep accept backlog for connect storms, one task per connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::host::Host;
use crate::ws::connection;

/// Bind `addr` with a listen backlog of `backlog` (tokio's default is 128, which drops
/// connections when thousands of bots connect at once).
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Accept connections until `stop` turns true.
pub async fn accept_loop(listener: TcpListener, host: Arc<Host>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Unjoined connections hold slots for up to the handshake and join timeouts:
                    // one address may not take them all.
                    if !host.unjoined_opened(peer.ip()) {
                        drop(stream);
                        continue;
                    }
                    let id = host.connection_opened();
                    tokio::spawn(connection::serve(stream, Arc::clone(&host), id, peer.ip()));
                }
                Err(e) => {
                    // Out of file descriptors or a transient failure: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = crate::server::until_true(&mut stop) => return,
        }
    }
}
