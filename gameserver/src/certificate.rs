//! The server's certificate for TLS 1.3 — QUIC's and `wss://`'s: a configured chain and key (PEM
//! files), or, for development, a self-signed certificate made at start whose SHA-256 clients pin.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
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

/// A TLS 1.3-only server configuration (ring) presenting `identity`, offering `alpn`.
pub fn tls13_server(identity: &Identity, alpn: Vec<Vec<u8>>) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .context("the certificate and key do not fit")?;
    tls.alpn_protocols = alpn;
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_identity_has_a_stable_hash_and_makes_a_config() {
        let id = Identity::self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert_eq!(id.sha256, <[u8; 32]>::from(Sha256::digest(id.chain[0].as_ref())));
        assert_eq!(id.sha256_hex().len(), 64);
        let tls = tls13_server(&id, vec![b"x".to_vec()]).unwrap();
        assert_eq!(tls.alpn_protocols, [b"x".to_vec()]);
    }
}
