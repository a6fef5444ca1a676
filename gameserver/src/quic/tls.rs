//! QUIC's TLS 1.3: a configured certificate chain and key (PEM files), or, for development, a
//! self-signed certificate made at start whose SHA-256 clients pin (the `serverCertificateHashes`
//! pattern of WebTransport). ALPN names the `arena.v1` encoding, as the WebSocket subprotocol does.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arena_sdk::Encoding;
use arena_sdk::protocol::MAX_CLIENT_FRAME_BYTES;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// The server's certificate chain and key, and the SHA-256 of its certificate.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub sha256: [u8; 32],
}

impl Identity {
    /// A self-signed certificate (ECDSA P-256) for `names` (host names or IP addresses).
    pub fn self_signed(names: &[String]) -> anyhow::Result<Self> {
        let made = rcgen::generate_simple_self_signed(names.to_vec()).context("making a self-signed certificate")?;
        let cert = made.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        let sha256 = Sha256::digest(cert.as_ref()).into();
        Ok(Identity { chain: vec![cert], key, sha256 })
    }

    /// The chain (leaf first) and key of two PEM files.
    pub fn from_pem(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| cert.display().to_string())?
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: not PEM certificates", cert.display()))?;
        let leaf = chain.first().with_context(|| format!("{}: no certificate", cert.display()))?;
        let sha256 = Sha256::digest(leaf.as_ref()).into();
        let key =
            PrivateKeyDer::from_pem_file(key).with_context(|| format!("{}: no PEM private key", key.display()))?;
        Ok(Identity { chain, key, sha256 })
    }

    /// The SHA-256 of the certificate, in lower-case hex.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .context("the QUIC certificate and key do not fit")?;
    tls.alpn_protocols = alpn();
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
    fn a_self_signed_identity_makes_a_server_config_and_a_stable_hash() {
        let id = Identity::self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert_eq!(id.sha256, <[u8; 32]>::from(Sha256::digest(id.chain[0].as_ref())));
        assert_eq!(id.sha256_hex().len(), 64);
        server_config(&id, Duration::from_secs(10), 64 * 1024).unwrap();
        assert_eq!(alpn(), [b"arena.v1.msgpack".to_vec(), b"arena.v1.json".to_vec()]);
    }
}
