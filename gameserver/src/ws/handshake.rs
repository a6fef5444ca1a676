//! The server side of the WebSocket opening handshake (RFC 6455 §4.2), with subprotocol choice.
//!
//! [`decide`] is pure: request bytes in, response out. A request that cannot become an
//! `arena.v1` session gets a plain HTTP error saying why (wrong path, not a WebSocket upgrade,
//! no supported subprotocol, server draining). [`shed_response`] is the `503` a connection gets
//! when the server takes no more connections waiting to join.

use std::time::Duration;

use arena_sdk::Encoding;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tungstenite::handshake::derive_accept_key;

/// The path of the WebSocket endpoint.
pub const WS_PATH: &str = "/ws";
/// Largest handshake request accepted.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// The outcome of a complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Switch protocols: send `response`, then speak WebSocket in `enc`.
    Accept { enc: Encoding, response: Vec<u8> },
    /// Send `response` (an HTTP error) and close.
    Reject { status: u16, response: Vec<u8> },
}

/// Parse state of the request bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Need more bytes.
    Partial,
    /// The request ends at this offset; `decision` says what to answer.
    Complete { len: usize, decision: Decision },
}

fn reject(status: u16, reason: &str, extra_headers: &str, body: &str) -> Decision {
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    Decision::Reject { status, response: response.into_bytes() }
}

fn header<'a>(req: &'a httparse::Request<'_, '_>, name: &str) -> impl Iterator<Item = &'a str> {
    req.headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
}

fn has_token(req: &httparse::Request<'_, '_>, name: &str, token: &str) -> bool {
    header(req, name).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `503` for a connection turned away before its request was read: `reason`, retry in a
/// second.
pub fn shed_response(reason: &str) -> Vec<u8> {
    let body = format!("{reason}\n");
    match reject(503, "Service Unavailable", "Retry-After: 1\r\n", &body) {
        Decision::Reject { response, .. } | Decision::Accept { response, .. } => response,
    }
}

/// Decide what to answer to the request in `buf` (which may be incomplete).
pub fn decide(buf: &[u8], draining: bool) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Ok(httparse::Status::Complete(len)) => len,
        Err(e) => {
            // Not HTTP (or more than 64 headers): answer anyway, then close.
            let body = format!("bad handshake request: {e}\n");
            return Parsed::Complete { len: buf.len(), decision: reject(400, "Bad Request", "", &body) };
        }
    };
    Parsed::Complete { len, decision: decide_request(&req, draining) }
}

fn decide_request(req: &httparse::Request<'_, '_>, draining: bool) -> Decision {
    let path = req.path.unwrap_or("");
    if path.split('?').next() != Some(WS_PATH) {
        return reject(404, "Not Found", "", "the WebSocket endpoint is /ws\n");
    }
    if req.method != Some("GET") {
        return reject(405, "Method Not Allowed", "Allow: GET\r\n", "use GET to open a WebSocket\n");
    }
    if !has_token(req, "Upgrade", "websocket") || !has_token(req, "Connection", "upgrade") {
        return reject(426, "Upgrade Required", "Upgrade: websocket\r\n", "this endpoint speaks WebSocket only\n");
    }
    if header(req, "Sec-WebSocket-Version").next().map(str::trim) != Some("13") {
        return reject(
            426,
            "Upgrade Required",
            "Sec-WebSocket-Version: 13\r\n",
            "only WebSocket version 13 is supported\n",
        );
    }
    let key = header(req, "Sec-WebSocket-Key").next().map(str::trim).unwrap_or("");
    if B64.decode(key).map(|k| k.len()) != Ok(16) {
        return reject(400, "Bad Request", "", "Sec-WebSocket-Key must be 16 bytes in base64\n");
    }
    // The first subprotocol the client offers that we speak.
    let offered: Vec<&str> = header(req, "Sec-WebSocket-Protocol").flat_map(|v| v.split(',')).map(str::trim).collect();
    let Some(enc) = offered.iter().find_map(|p| Encoding::from_subprotocol(p)) else {
        let body = if offered.is_empty() {
            "missing Sec-WebSocket-Protocol: offer arena.v1.msgpack or arena.v1.json\n".to_owned()
        } else {
            format!("unsupported subprotocol {:?}: offer arena.v1.msgpack or arena.v1.json\n", offered.join(", "))
        };
        return reject(400, "Bad Request", "", &body);
    };
    if draining {
        return reject(503, "Service Unavailable", "Retry-After: 5\r\n", "server draining\n");
    }
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
        derive_accept_key(key.as_bytes()),
        enc.subprotocol()
    );
    Decision::Accept { enc, response: response.into_bytes() }
}

/// Why a handshake did not produce a session.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("no complete request within {0:?}")]
    Timeout(Duration),
    #[error("request larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("connection closed during the handshake")]
    Eof,
    #[error("refused with HTTP {0}")]
    Rejected(u16),
    #[error("plain HTTP on a TLS-only listener")]
    NotTls,
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

impl HandshakeError {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            HandshakeError::Io(_) => "io",
            HandshakeError::Timeout(_) => "timeout",
            HandshakeError::TooLarge => "too_large",
            HandshakeError::Eof => "eof",
            HandshakeError::Rejected(_) => "refused",
            HandshakeError::NotTls => "not_tls",
            HandshakeError::Tls(_) => "tls",
        }
    }
}

/// A completed handshake: the encoding, and bytes the client sent after its request.
#[derive(Debug)]
pub struct Accepted {
    pub enc: Encoding,
    pub leftover: Vec<u8>,
}

/// Run the handshake on a fresh connection (or a TLS stream on one).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    draining: impl Fn() -> bool,
    timeout: Duration,
) -> Result<Accepted, HandshakeError> {
    tokio::time::timeout(timeout, accept_inner(stream, draining)).await.map_err(|_| HandshakeError::Timeout(timeout))?
}

async fn accept_inner<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    draining: impl Fn() -> bool,
) -> Result<Accepted, HandshakeError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HandshakeError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
        match decide(&buf, draining()) {
            Parsed::Partial if buf.len() >= MAX_REQUEST_BYTES => {
                if let Decision::Reject { response, .. } =
                    reject(431, "Request Header Fields Too Large", "", "handshake request too large\n")
                {
                    let _ = stream.write_all(&response).await;
                }
                return Err(HandshakeError::TooLarge);
            }
            Parsed::Partial => continue,
            Parsed::Complete { len, decision } => {
                return match decision {
                    Decision::Accept { enc, response } => {
                        stream.write_all(&response).await?;
                        Ok(Accepted { enc, leftover: buf.split_off(len) })
                    }
                    Decision::Reject { status, response } => {
                        stream.write_all(&response).await?;
                        let _ = stream.shutdown().await;
                        Err(HandshakeError::Rejected(status))
                    }
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: &str) -> String {
        format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
    }

    fn decision(req: &str, draining: bool) -> Decision {
        match decide(req.as_bytes(), draining) {
            Parsed::Complete { decision, .. } => decision,
            Parsed::Partial => panic!("partial"),
        }
    }

    fn status(d: &Decision) -> u16 {
        match d {
            Decision::Accept { .. } => 101,
            Decision::Reject { status, .. } => *status,
        }
    }

    #[test]
    fn accepts_a_supported_subprotocol() {
        let d = decision(&request("Sec-WebSocket-Protocol: chat, arena.v1.json\r\n"), false);
        let Decision::Accept { enc, response } = d else { panic!("{d:?}") };
        assert_eq!(enc, Encoding::Json);
        let text = String::from_utf8(response).unwrap();
        // The RFC 6455 example key and its accept value.
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{text}");
        assert!(text.contains("Sec-WebSocket-Protocol: arena.v1.json\r\n"));
        let d = decision(&request("Sec-WebSocket-Protocol: arena.v1.msgpack\r\n"), false);
        assert!(matches!(d, Decision::Accept { enc: Encoding::MsgPack, .. }));
    }

    #[test]
    fn refuses_with_a_clear_http_error() {
        let missing = decision(&request(""), false);
        assert_eq!(status(&missing), 400);
        let Decision::Reject { response, .. } = &missing else { unreachable!() };
        assert!(String::from_utf8_lossy(response).contains("missing Sec-WebSocket-Protocol"));
        let unknown = decision(&request("Sec-WebSocket-Protocol: arena.v2.json\r\n"), false);
        let Decision::Reject { response, .. } = &unknown else { panic!() };
        assert!(String::from_utf8_lossy(response).contains("unsupported subprotocol \"arena.v2.json\""));
        let proto = "Sec-WebSocket-Protocol: arena.v1.json\r\n";
        assert_eq!(status(&decision(&request(proto).replace("/ws", "/x"), false)), 404);
        assert_eq!(status(&decision(&request(proto).replace("GET", "POST"), false)), 405);
        assert_eq!(status(&decision(&request(proto).replace("Upgrade: websocket", "Upgrade: h2c"), false)), 426);
        assert_eq!(status(&decision(&request(proto).replace("Version: 13", "Version: 8"), false)), 426);
        assert_eq!(status(&decision(&request(proto).replace("dGhlIHNhbXBsZSBub25jZQ==", "abc"), false)), 400);
        assert_eq!(status(&decision(&request(proto), true)), 503);
        assert_eq!(status(&decision("\x16\x03\x01garbage\r\n\r\n", false)), 400);
    }

    #[test]
    fn shedding_answers_503_with_retry_advice() {
        let text = String::from_utf8(shed_response("busy")).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{text}");
        assert!(text.contains("Retry-After: 1\r\n") && text.ends_with("\r\n\r\nbusy\n"), "{text}");
    }

    #[test]
    fn partial_requests_wait_and_leftovers_are_kept() {
        let req = request("Sec-WebSocket-Protocol: arena.v1.json\r\n");
        assert_eq!(decide(&req.as_bytes()[..20], false), Parsed::Partial);
        let mut with_frame = req.clone().into_bytes();
        with_frame.extend_from_slice(b"\x81\x80");
        match decide(&with_frame, false) {
            Parsed::Complete { len, .. } => assert_eq!(len, req.len()),
            Parsed::Partial => panic!("partial"),
        }
    }
}
