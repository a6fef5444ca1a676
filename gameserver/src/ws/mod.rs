//! The WebSocket transport: the listener, the handshake, each connection's task (`reader`:
//! frames in, flushing out), its socket and outbound queue (`writer`), and frames both ways
//! (`inbound` decodes the client's, `frame` builds the server's), and TLS for `wss://` (`tls`).

pub mod frame;
pub mod handshake;
pub mod inbound;
pub mod listener;
pub mod reader;
pub mod tls;
pub mod writer;
