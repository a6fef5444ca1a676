//! The async QUIC client (`docs/protocol.md`, QUIC): the same messages as over WebSocket, framed
//! on one bidirectional control stream (a 4-byte big-endian length, then the message), the
//! encoding chosen by ALPN. The server's certificate is verified against roots, or pinned by its
//! SHA-256 (a development server's self-signed certificate, whose hash it publishes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::client::{ClientError, Received};
use crate::codec::{Encoding, decode_server, encode};
use crate::mirror::{ClientSession, Mirror, SessionEvent};
use crate::protocol::{ClientMsg, Command, ServerMsg, Welcome, close};

/// Largest server message this client reads (a whole world's snapshot is far smaller).
pub const MAX_SERVER_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Bytes the server may send ahead of what this client read: seconds of a busy world's updates.
/// A client that stops reading stops the server past it, and the server's lag policy applies.
pub const RECEIVE_WINDOW: u32 = 256 * 1024;

/// After the server finished its stream, how long its connection close may take to arrive.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Socket buffer asked for by [`endpoint`] (the kernel caps it at `net.core.rmem_max` /
/// `wmem_max`): a thousand handshakes a second overflow Linux's default of 208 KiB, and a dropped
/// Initial costs its connection a second before it is sent again.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// A QUIC endpoint on `bind` whose UDP socket asks for [`SOCKET_BUFFER_BYTES`] of receive and
/// send buffer; a server when `server` is given, else a client only.
pub fn endpoint(bind: SocketAddr, server: Option<quinn::ServerConfig>) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() {
        // Like quinn's own binding: dual-stack where the address allows.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer than asked for still works.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&bind.into())?;
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket.into(), runtime)
}

/// How the server's certificate is trusted.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Its certificate's SHA-256, as the server (or the allocator) publishes it.
    Pinned([u8; 32]),
    /// Certificates chaining to these roots, for the server name given to `connect`.
    Roots(Arc<rustls::RootCertStore>),
}

impl Trust {
    /// A pin from its hex form.
    pub fn pinned_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut pin = [0u8; 32];
        for (i, b) in pin.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Trust::Pinned(pin))
    }
}

/// Accepts exactly the certificate with the pinned SHA-256; signatures are still checked.
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the server's certificate is not the pinned one".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn quic_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Quic(e.to_string())
}

/// The client configuration for `enc`, `trust` and a receive window of `window` bytes.
pub fn client_config(enc: Encoding, trust: &Trust, window: u32) -> Result<quinn::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(quic_err)?;
    let mut tls = match trust {
        Trust::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier { pin: *pin, provider }))
            .with_no_client_auth(),
        Trust::Roots(roots) => builder.with_root_certificates(Arc::clone(roots)).with_no_client_auth(),
    };
    tls.alpn_protocols = vec![enc.subprotocol().as_bytes().to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(quic_err)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(5)))
        .max_concurrent_bidi_streams(0u8.into())
        .stream_receive_window(window.into())
        .receive_window(window.into());
    cfg.transport_config(Arc::new(t));
    Ok(cfg)
}

/// One QUIC connection to a gameserver.
#[derive(Debug)]
pub struct QuicClient {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    enc: Encoding,
    session: ClientSession,
    resync_owed: bool,
    /// Bytes read from the control stream, not yet a whole frame (kept across a cancelled
    /// `recv`, which is therefore cancel-safe).
    inbox: Vec<u8>,
    /// Frames not yet (wholly) written: a cancelled send leaves the rest here, written first by
    /// the next call, so the stream's framing survives any cancellation.
    outbox: Vec<u8>,
}

impl QuicClient {
    /// Connect to `addr` (UDP) as `server_name`, trusting its certificate by `trust`, speaking
    /// `enc`; opens the control stream.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        enc: Encoding,
        trust: &Trust,
    ) -> Result<Self, ClientError> {
        Self::connect_with_window(addr, server_name, enc, trust, RECEIVE_WINDOW).await
    }

    /// [`connect`](Self::connect) with a receive window of `window` bytes instead of
    /// [`RECEIVE_WINDOW`].
    pub async fn connect_with_window(
        addr: SocketAddr,
        server_name: &str,
        enc: Encoding,
        trust: &Trust,
        window: u32,
    ) -> Result<Self, ClientError> {
        let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let mut endpoint = endpoint(bind, None).map_err(quic_err)?;
        endpoint.set_default_client_config(client_config(enc, trust, window)?);
        let connection = endpoint.connect(addr, server_name).map_err(quic_err)?.await.map_err(closed)?;
        let (send, recv) = connection.open_bi().await.map_err(closed)?;
        Ok(QuicClient {
            endpoint,
            connection,
            send,
            recv,
            enc,
            session: ClientSession::new(),
            resync_owed: false,
            inbox: Vec::new(),
            outbox: Vec::new(),
        })
    }

    pub fn encoding(&self) -> Encoding {
        self.enc
    }

    pub fn session(&self) -> &ClientSession {
        &self.session
    }

    /// The world mirror, once joined.
    pub fn mirror(&self) -> Option<&Mirror> {
        self.session.mirror()
    }

    /// Send any client message.
    pub async fn send(&mut self, msg: &ClientMsg) -> Result<(), ClientError> {
        let bytes = encode(self.enc, msg)?;
        self.send_raw(&bytes).await
    }

    /// Send one frame holding `bytes`, whatever they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let len = u32::try_from(bytes.len()).map_err(quic_err)?;
        let mut frame = Vec::with_capacity(4 + bytes.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(bytes);
        self.send_bytes(&frame).await
    }

    /// Write raw bytes on the control stream (tests send broken frames this way).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.outbox.extend_from_slice(bytes);
        self.flush().await
    }

    /// Write what the outbox holds; cancel-safe (what was written is gone from it).
    async fn flush(&mut self) -> Result<(), ClientError> {
        while !self.outbox.is_empty() {
            let n = self.send.write(&self.outbox).await.map_err(|e| match e {
                quinn::WriteError::ConnectionLost(e) => closed(e),
                other => quic_err(other),
            })?;
            self.outbox.drain(..n);
        }
        Ok(())
    }

    /// Join with a ticket and wait for the `welcome`.
    pub async fn join(&mut self, ticket: &str, world: Option<&str>) -> Result<Welcome, ClientError> {
        self.send(&ClientMsg::Join { ticket: ticket.to_owned(), world: world.map(str::to_owned) }).await?;
        self.await_welcome().await
    }

    /// Resume a kept seat and wait for the `welcome`.
    pub async fn resume(&mut self, token: &str) -> Result<Welcome, ClientError> {
        self.send(&ClientMsg::Resume { token: token.to_owned() }).await?;
        self.await_welcome().await
    }

    async fn await_welcome(&mut self) -> Result<Welcome, ClientError> {
        loop {
            let r = self.recv().await?;
            match r.msg {
                ServerMsg::Welcome(w) => return Ok(w),
                ServerMsg::Error(e) => return Err(ClientError::Refused(e)),
                _ => {}
            }
        }
    }

    /// Send a command as the next numbered input; returns its `seq`.
    pub async fn input(&mut self, command: Command) -> Result<u32, ClientError> {
        let msg = self.session.input(command);
        self.send(&msg).await?;
        Ok(self.session.last_seq())
    }

    /// Receive the next message and apply it to the mirror. Sends `resync` when a gap is seen.
    /// Cancel-safe: a partly read frame waits for the next call.
    pub async fn recv(&mut self) -> Result<Received, ClientError> {
        if self.resync_owed {
            // Framed into the outbox at once: a cancelled flush leaves the rest for the next call.
            let resync = encode(self.enc, &self.session.resync())?;
            self.resync_owed = false;
            self.outbox.extend_from_slice(&u32::try_from(resync.len()).map_err(quic_err)?.to_be_bytes());
            self.outbox.extend_from_slice(&resync);
        }
        self.flush().await?;
        let bytes = loop {
            if self.inbox.len() >= 4 {
                let len = u32::from_be_bytes([self.inbox[0], self.inbox[1], self.inbox[2], self.inbox[3]]) as usize;
                if len > MAX_SERVER_FRAME_BYTES {
                    return Err(quic_err(format!("a server frame of {len} bytes")));
                }
                if self.inbox.len() >= 4 + len {
                    let frame: Vec<u8> = self.inbox.drain(..4 + len).skip(4).collect();
                    break frame;
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.recv.read(&mut chunk).await {
                Ok(Some(n)) => self.inbox.extend_from_slice(&chunk[..n]),
                Ok(None) => return Err(self.read_error(None).await),
                Err(e) => return Err(self.read_error(Some(e)).await),
            }
        };
        let msg = decode_server(self.enc, &bytes)?;
        let event = self.session.handle(&msg);
        if matches!(event, SessionEvent::ResyncNeeded(_)) {
            self.resync_owed = true;
        }
        Ok(Received { msg, event })
    }

    /// Why the control stream ended (`None`: the server finished it).
    async fn read_error(&self, e: Option<quinn::ReadError>) -> ClientError {
        match e {
            Some(quinn::ReadError::ConnectionLost(e)) => closed(e),
            // The server finished its side once we had everything: its close follows.
            _ => match tokio::time::timeout(CLOSE_WAIT, self.connection.closed()).await {
                Ok(e) => closed(e),
                Err(_) => ClientError::Closed { code: 1006, reason: "stream ended without a close".into() },
            },
        }
    }

    /// [`recv`](Self::recv) with a deadline.
    pub async fn recv_timeout(&mut self, limit: Duration) -> Result<Received, ClientError> {
        tokio::time::timeout(limit, self.recv()).await.map_err(|_| ClientError::Timeout(limit))?
    }

    /// Leave: close with 1000, which frees the seat at once.
    pub async fn leave(self) {
        self.connection.close(quinn::VarInt::from_u32(u32::from(close::NORMAL)), b"leave");
        self.endpoint.wait_idle().await;
    }

    /// Close the connection as a lost one would (code 1001, not 1000): its seat is kept for the
    /// grace period, for a `resume`.
    pub fn abandon(self) {
        self.connection.close(quinn::VarInt::from_u32(u32::from(close::GOING_AWAY)), b"gone");
    }

    /// Finish the control stream (no more messages from this client); tests use it.
    pub fn finish_stream(&mut self) {
        let _ = self.send.finish();
    }

    /// The QUIC connection, for tests.
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }
}

/// A lost connection as a close: the server's application close code and reason.
fn closed(e: quinn::ConnectionError) -> ClientError {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => ClientError::Closed {
            code: u16::try_from(c.error_code.into_inner()).unwrap_or(1006),
            reason: String::from_utf8_lossy(&c.reason).into_owned(),
        },
        other => ClientError::Closed { code: 1006, reason: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_read_from_hex() {
        let Some(Trust::Pinned(p)) = Trust::pinned_hex(&"ab".repeat(32)) else { panic!() };
        assert_eq!(p, [0xab; 32]);
        assert!(Trust::pinned_hex("abc").is_none());
        assert!(Trust::pinned_hex(&"zz".repeat(32)).is_none());
    }
}
