//! `wss://`: TLS 1.3 (rustls) on the WebSocket listener when a certificate is configured.
//!
//! The TLS handshake and the HTTP upgrade run on a `tokio-rustls` stream; the connection is then
//! taken apart into its socket and its [`ServerConnection`], which [`Conn`](crate::ws::writer::Conn)
//! keeps: frames are encrypted into the outbound queue and written with the same non-blocking
//! writes as plain connections, and what the socket holds is decrypted a turn at a time. A listener
//! with a certificate serves TLS only: a client speaking plain HTTP (`ws://`) to it is answered
//! `400` saying to use `wss://`, in plain text it can read.

use std::io::{self, Read, Write};
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConnection;

use crate::certificate::{Identity, tls13_server};

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The listener's TLS configuration for `identity`: TLS 1.3, ALPN `http/1.1` (the upgrade is
/// HTTP/1.1).
pub fn server_config(identity: &Identity) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut tls = tls13_server(identity, vec![b"http/1.1".to_vec()]).context("wss://")?;
    // Tickets for resumption would only cost memory: bots reconnect rarely.
    tls.send_tls13_tickets = 0;
    Ok(Arc::new(tls))
}

/// Whether a connection's first byte says it speaks TLS.
pub fn starts_tls(first: u8) -> bool {
    first == TLS_HANDSHAKE_RECORD
}

/// The answer to a plain-HTTP client on a TLS-only listener.
pub fn plain_refusal() -> Vec<u8> {
    let body = "this endpoint serves TLS only: connect with wss://\n";
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One connection's TLS state once the upgrade is done.
#[derive(Debug)]
pub struct Session {
    conn: ServerConnection,
}

impl Session {
    pub fn new(mut conn: ServerConnection) -> Box<Self> {
        // The outbound queue's cap bounds what waits; rustls's own buffer is emptied at once.
        conn.set_buffer_limit(None);
        Box::new(Session { conn })
    }

    /// Encrypt `plain` and append the records to `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        self.conn.writer().write_all(plain)?;
        self.drain_records(out)
    }

    /// Append the close_notify alert to `out`.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        self.conn.send_close_notify();
        self.drain_records(out)
    }

    fn drain_records(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(out)?;
        }
        Ok(())
    }

    /// Take `cipher` (bytes read from the socket), appending the plaintext to `plain` and any
    /// records rustls answers with (alerts, key updates) to `out`. `Ok(true)` when the client
    /// sent close_notify. A record that fails to decrypt or parse is an error; the alert that
    /// says so is in `out`.
    pub fn open(&mut self, mut cipher: &[u8], plain: &mut bytes::BytesMut, out: &mut Vec<u8>) -> io::Result<bool> {
        let mut closed = false;
        while !cipher.is_empty() {
            if self.conn.read_tls(&mut cipher)? == 0 {
                break;
            }
            let state = self.conn.process_new_packets();
            self.drain_records(out)?;
            let state = state.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            closed |= state.peer_has_closed();
            closed |= self.take_plaintext(plain)?;
        }
        Ok(closed)
    }

    /// Move the plaintext rustls holds into `plain`. `Ok(true)` after the client's close_notify.
    pub fn take_plaintext(&mut self, plain: &mut bytes::BytesMut) -> io::Result<bool> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.conn.reader().read(&mut chunk) {
                Ok(0) => return Ok(true),
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_told_to_use_wss() {
        assert!(starts_tls(0x16));
        assert!(!starts_tls(b'G'));
        let text = String::from_utf8(plain_refusal()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert!(body.contains("wss://"), "{body}");
    }

    #[test]
    fn an_acceptor_is_made_from_a_self_signed_identity() {
        let id = Identity::self_signed(&["localhost".into()]).unwrap();
        server_config(&id).unwrap();
    }
}
