//! QUIC's TLS 1.3 with the server's [`Identity`] (a self-signed one's SHA-256 is what clients pin:
//! the `serverCertificateHashes` pattern of WebTransport). ALPN names the `arena.v1` encoding, as
//! the WebSocket subprotocol does.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arena_sdk::Encoding;
use arena_sdk::protocol::MAX_CLIENT_FRAME_BYTES;

pub use crate::certificate::Identity;
use crate::certificate::tls13_server;

/// The ALPN names the server speaks: one per encoding, the WebSocket subprotocols' names.
pub fn alpn() -> Vec<Vec<u8>> {
    Encoding::ALL.iter().map(|e| e.subprotocol().as_bytes().to_vec()).collect()
}

/// The endpoint's configuration: TLS 1.3 with `identity`, one bidirectional stream per
/// connection (the control stream), no unidirectional streams and no datagrams from clients,
/// receive windows sized to a few of the largest client frames, at most `send_window` bytes
/// unacknowledged per connection (whatever window a client offers: past it writes wait, the
/// connection's queue fills and the lag policy applies), `idle` without a packet closes.
pub fn server_config(identity: &Identity, idle: Duration, send_window: u64) -> anyhow::Result<quinn::ServerConfig> {
    let tls = tls13_server(identity, alpn()).context("QUIC")?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("QUIC TLS")?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let window = (MAX_CLIENT_FRAME_BYTES as u32 + 4) * 4;
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1u8.into())
        .max_concurrent_uni_streams(0u8.into())
        .datagram_receive_buffer_size(None)
        .stream_receive_window(window.into())
        .receive_window(window.into())
        .send_window(send_window)
        .max_idle_timeout(Some(idle.try_into().context("idle timeout")?));
    cfg.transport_config(Arc::new(t));
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_identity_makes_a_server_config() {
        let id = Identity::self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        server_config(&id, Duration::from_secs(10), 64 * 1024).unwrap();
        assert_eq!(alpn(), [b"arena.v1.msgpack".to_vec(), b"arena.v1.json".to_vec()]);
    }
}
