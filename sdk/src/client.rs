//! The async WebSocket client: connect with a subprotocol, join or resume, send inputs, and
//! receive messages that keep a [`ClientSession`] mirror current. A detected gap sends `resync`
//! by itself.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig, frame::coding::CloseCode};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::codec::{DecodeError, EncodeError, Encoding, decode_server, encode};
use crate::mirror::{ClientSession, Mirror, SessionEvent};
use crate::protocol::{ClientMsg, Command, ErrorMsg, ServerMsg, Welcome, close};

/// What went wrong on a client connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL: {0}")]
    Url(String),
    #[error("WebSocket error: {0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("the server did not agree to subprotocol {0}")]
    Subprotocol(&'static str),
    #[error("server refused: {} ({})", .0.message, .0.code.as_str())]
    Refused(ErrorMsg),
    #[error("connection closed by the server: {code} {reason}")]
    Closed { code: u16, reason: String },
    #[error("the server sent an undecodable message: {0}")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("the server sent a {0} frame on this subprotocol")]
    WrongFrame(&'static str),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("QUIC: {0}")]
    Quic(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// The system's root certificates (read once), for `wss://` servers with public certificates.
/// Certificates the system store holds that rustls cannot parse are skipped.
pub fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        Arc::new(roots)
    }))
}

/// TLS 1.3 with ring, verifying the server against `roots`.
fn tls_config(roots: Arc<rustls::RootCertStore>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A message received and what it did to the session.
#[derive(Debug, Clone)]
pub struct Received {
    pub msg: ServerMsg,
    pub event: SessionEvent,
}

/// One WebSocket connection to a gameserver.
#[derive(Debug)]
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    enc: Encoding,
    session: ClientSession,
    /// A `resync` is owed to the server (kept across a cancelled `recv`).
    resync_owed: bool,
}

impl Client {
    /// Connect to `url` (`ws://host:port/ws`, or `wss://` verified against the system's root
    /// certificates) asking for `enc`'s subprotocol.
    pub async fn connect(url: &str, enc: Encoding) -> Result<Self, ClientError> {
        Self::connect_via(url, enc, None).await
    }

    /// [`Client::connect`], with a `wss://` server's certificate verified against `roots`
    /// (a private CA's, say) instead of the system's.
    pub async fn connect_with_roots(
        url: &str,
        enc: Encoding,
        roots: Arc<rustls::RootCertStore>,
    ) -> Result<Self, ClientError> {
        Self::connect_via(url, enc, Some(roots)).await
    }

    async fn connect_via(
        url: &str,
        enc: Encoding,
        roots: Option<Arc<rustls::RootCertStore>>,
    ) -> Result<Self, ClientError> {
        let mut request = url.into_client_request().map_err(|e| ClientError::Url(e.to_string()))?;
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(enc.subprotocol()));
        let config = WebSocketConfig::default().read_buffer_size(16 * 1024).write_buffer_size(0);
        let connector = match request.uri().scheme_str() {
            Some("wss") => {
                let roots = roots.unwrap_or_else(system_roots);
                Some(Connector::Rustls(tls_config(roots)?))
            }
            _ => None,
        };
        let (ws, response) =
            tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector).await?;
        let agreed = response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok());
        if agreed != Some(enc.subprotocol()) {
            return Err(ClientError::Subprotocol(enc.subprotocol()));
        }
        Ok(Client { ws, enc, session: ClientSession::new(), resync_owed: false })
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
        self.send_raw(bytes).await
    }

    /// Send pre-encoded bytes in the frame type of this subprotocol.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        let msg = match self.enc {
            Encoding::MsgPack => Message::Binary(bytes.into()),
            Encoding::Json => {
                Message::Text(String::from_utf8(bytes).map_err(|e| ClientError::Url(e.to_string()))?.into())
            }
        };
        self.ws.send(msg).await?;
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
    pub async fn recv(&mut self) -> Result<Received, ClientError> {
        self.send_owed_resync().await?;
        loop {
            let Some(frame) = self.ws.next().await else {
                return Err(ClientError::Closed { code: 1006, reason: "connection lost".into() });
            };
            let bytes = match frame? {
                Message::Binary(b) if self.enc == Encoding::MsgPack => b,
                Message::Text(t) if self.enc == Encoding::Json => t.into(),
                Message::Binary(_) => return Err(ClientError::WrongFrame("binary")),
                Message::Text(_) => return Err(ClientError::WrongFrame("text")),
                Message::Close(frame) => {
                    let (code, reason) =
                        frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                    return Err(ClientError::Closed { code, reason });
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            let msg = decode_server(self.enc, &bytes)?;
            let event = self.session.handle(&msg);
            if matches!(event, SessionEvent::ResyncNeeded(_)) {
                // Owed first, sent after: if this call is cancelled mid-send, the next sends it.
                self.resync_owed = true;
                self.send_owed_resync().await?;
            }
            return Ok(Received { msg, event });
        }
    }

    async fn send_owed_resync(&mut self) -> Result<(), ClientError> {
        if self.resync_owed {
            let resync = self.session.resync();
            self.send(&resync).await?;
            self.resync_owed = false;
        }
        Ok(())
    }

    /// [`recv`](Self::recv) with a deadline.
    pub async fn recv_timeout(&mut self, limit: Duration) -> Result<Received, ClientError> {
        tokio::time::timeout(limit, self.recv()).await.map_err(|_| ClientError::Timeout(limit))?
    }

    /// Leave: close with 1000, which frees the seat at once.
    pub async fn leave(mut self) -> Result<(), ClientError> {
        let frame = CloseFrame { code: CloseCode::from(close::NORMAL), reason: "leave".into() };
        self.ws.close(Some(frame)).await?;
        // Read until the server's close answer ends the stream.
        while let Some(Ok(_)) = self.ws.next().await {}
        Ok(())
    }

    /// The underlying stream, for tests that need to send raw frames.
    pub fn ws_mut(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.ws
    }
}
