//! Certificates for TLS tests: a self-signed certificate for some names, written as the PEM files
//! a server is configured with, and a root store that trusts it. The files go when it is dropped.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

use crate::stores::unique;

#[derive(Debug)]
pub struct TestCert {
    dir: PathBuf,
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    /// A self-signed certificate for `names` (host names or IP addresses).
    pub fn new(names: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(unique("arena-cert-"));
        std::fs::create_dir_all(&dir).expect("a directory for the certificate");
        let made = rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("a self-signed certificate");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).expect("write the certificate");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write the key");
        TestCert { dir, cert, key, der: made.cert.der().clone() }
    }

    /// The two files, as a server's configuration takes them.
    pub fn files(&self) -> (PathBuf, PathBuf) {
        (self.cert.clone(), self.key.clone())
    }

    /// Roots that trust this certificate and nothing else.
    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("a parsable certificate");
        Arc::new(roots)
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
