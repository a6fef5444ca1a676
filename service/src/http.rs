//! An HTTP/1.1 server for Arena's APIs that a client cannot exhaust.
//!
//! - **Connections**: at most [`HttpLimits::max_connections`] at once. The permit is taken
//!   *before* `accept`, so past the cap new connections wait in the kernel's backlog instead of
//!   costing a descriptor and a task each.
//! - **Heads**: a request head must arrive within [`HttpLimits::header_timeout`] (an idle
//!   keep-alive connection is closed after the same time) and fit in
//!   [`HttpLimits::max_head_bytes`] with at most [`HttpLimits::max_headers`] headers.
//! - **Bodies** are read by the handler, after it checked the caller's key, with [`read_body`]:
//!   a size limit and a deadline.
//! - **Every refusal is JSON** `{"error": {"code", "message"}}`, also the bare `400`/`414`/`431`
//!   that hyper writes by itself when it cannot parse a head: [`ErrorRewrite`] replaces them on
//!   the way out.
//!
//! `serve` returns once `shutdown` is cancelled and the open connections finished their requests
//! (or [`HttpLimits::drain_timeout`] passed).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Bounds of one HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Open connections at most; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time allowed for a request head, and for an idle keep-alive connection.
    pub header_timeout: Duration,
    /// Largest request head (request line and headers), in bytes (at least 8192).
    pub max_head_bytes: usize,
    /// Most headers in a request.
    pub max_headers: usize,
    /// How long a shutdown waits for requests in progress.
    pub drain_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(5),
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// The JSON body of every refusal: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorDetail<'a> {
    pub code: &'a str,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'a str>,
}

/// A JSON refusal.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorBody { error: ErrorDetail { code, message, field: None } };
    (status, axum::Json(body)).into_response()
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error("request body not received within {0:?}")]
    Timeout(Duration),
    #[error("request body could not be read: {0}")]
    Read(String),
}

impl BodyError {
    /// The JSON refusal for this error.
    pub fn refusal(&self) -> Response {
        match self {
            BodyError::TooLarge(_) => json_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", &self.to_string()),
            BodyError::Timeout(_) => json_error(StatusCode::REQUEST_TIMEOUT, "timeout", &self.to_string()),
            BodyError::Read(_) => json_error(StatusCode::BAD_REQUEST, "bad_request", &self.to_string()),
        }
    }
}

/// Read a request body of at most `limit` bytes within `deadline`. A `Content-Length` over the
/// limit is refused before anything is read.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize, deadline: Duration) -> Result<Bytes, BodyError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
        Err(_) => Err(BodyError::Timeout(deadline)),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge(limit)),
        Ok(Err(e)) => Err(BodyError::Read(e.to_string())),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The process's limit on open file descriptors (from `/proc/self/limits`).
pub fn fd_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Descriptors kept free for everything that is not a client connection (listeners, stores,
/// logs, the runtime).
pub const FD_RESERVE: usize = 64;

/// `wanted` connections, or fewer if the process could not open that many descriptors.
pub fn connection_cap(wanted: usize) -> usize {
    match fd_limit() {
        Some(limit) => wanted.min(limit.saturating_sub(FD_RESERVE)).max(1),
        None => wanted.max(1),
    }
}

/// Serve `router` on `listener` until `shutdown` is cancelled. Handlers see the peer address as
/// `ConnectInfo<SocketAddr>`. `open` counts open connections. The connection cap is lowered to
/// what the process's descriptor limit allows.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
    open: Option<Gauge>,
) -> io::Result<()> {
    let cap = connection_cap(limits.max_connections);
    if cap < limits.max_connections {
        tracing::warn!(wanted = limits.max_connections, cap, "the descriptor limit caps HTTP connections");
    }
    let permits = Arc::new(Semaphore::new(cap));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    loop {
        // The permit first: past the cap, connections wait in the backlog, not in memory.
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a transient failure: back off, keep serving.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = tower::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let conn = builder.serve_connection(TokioIo::new(ErrorRewrite::new(stream)), TowerToHyperService::new(service));
        let watched = graceful.watch(conn);
        let open = open.clone();
        if let Some(g) = &open {
            g.inc();
        }
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, %peer, "HTTP connection ended with an error");
            }
            if let Some(g) = open {
                g.dec();
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!("HTTP connections still open after the drain timeout; closing them");
    }
    Ok(())
}

/// A socket whose bare error responses (the ones hyper writes when it cannot parse a request)
/// are replaced with JSON ones. Every response the services write carries a `Content-Type` (a
/// `204` has no body and is not an error), so an error head without one comes from hyper.
#[derive(Debug)]
pub struct ErrorRewrite<T> {
    inner: T,
    /// A replacement still being written: bytes and how many went out.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> ErrorRewrite<T> {
    pub fn new(inner: T) -> Self {
        ErrorRewrite { inner, pending: None }
    }
}

/// The JSON replacement for a bare error response head, if `buf` is one.
pub fn rewrite_bare_error(buf: &[u8]) -> Option<Vec<u8>> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let status: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    if status < 400 {
        return None;
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if head.contains("\r\ncontent-type:") {
        return None;
    }
    let (reason, code, message) = match status {
        400 => ("Bad Request", "bad_request", "the request is not valid HTTP/1.1"),
        408 => ("Request Timeout", "timeout", "the request did not arrive in time"),
        413 => ("Payload Too Large", "payload_too_large", "request body too large"),
        414 => ("URI Too Long", "uri_too_long", "the request target is too long"),
        431 => ("Request Header Fields Too Large", "headers_too_large", "the request head is too large"),
        505 => ("HTTP Version Not Supported", "bad_request", "only HTTP/1.1 is served"),
        _ => ("Error", "bad_request", "the request was refused"),
    };
    let body = serde_json::to_string(&ErrorBody { error: ErrorDetail { code, message, field: None } }).ok()?;
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<T: AsyncWrite + Unpin> ErrorRewrite<T> {
    /// Write out a pending replacement; Ready once nothing is pending.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.pending {
            if *done >= bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ErrorRewrite<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ErrorRewrite<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(json) = rewrite_bare_error(buf) {
            self.pending = Some((json, 0));
            // Whatever part of it cannot go out now goes out on the next poll.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // One buffer per write, so that a response head is always seen whole.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// The peer of a request served by [`serve`].
pub type Peer = ConnectInfo<SocketAddr>;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn bare_errors_become_json_and_ours_stay() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite_bare_error(bare).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        assert!(out.contains("content-type: application/json"));
        assert!(out.ends_with(r#"{"error":{"code":"headers_too_large","message":"the request head is too large"}}"#));
        let ours = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert!(rewrite_bare_error(ours).is_none());
        assert!(rewrite_bare_error(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        assert!(rewrite_bare_error(b"HTTP/1.1 204 No Content\r\n\r\n").is_none());
        assert!(rewrite_bare_error(b"HTTP/1.1 400 Bad").is_none(), "an unfinished head is left alone");
    }

    async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn limits_hold_and_refusals_are_json() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/x", get(|| async { "ok" }));
        let limits =
            HttpLimits { max_connections: 2, header_timeout: Duration::from_millis(300), ..HttpLimits::default() };
        let stop = CancellationToken::new();
        let open = Gauge::default();
        let server = tokio::spawn(serve(listener, router, limits, stop.clone(), Some(open.clone())));

        let ok = raw(addr, b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let garbage = raw(addr, b"\x16\x03\x01 not http\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400") && garbage.contains(r#""code":"bad_request""#), "{garbage}");
        let big = format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
        let big = raw(addr, big.as_bytes()).await;
        assert!(big.starts_with("HTTP/1.1 431") && big.contains("headers_too_large"), "{big}");

        // Two half-sent heads hold both slots until the head deadline closes them.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /x HTTP/1.1\r\n").await.unwrap();
            held.push(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(open.get(), 2);
        for mut s in held {
            let mut buf = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
            assert!(read.is_ok(), "a half-sent head is closed after the head deadline");
        }
        let after = raw(addr, b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
        assert!(after.starts_with("HTTP/1.1 200"), "{after}");
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn bodies_have_a_limit_and_a_deadline() {
        let body = Body::from(vec![0u8; 10]);
        let got = read_body(&HeaderMap::new(), body, 16, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.len(), 10);
        let err = read_body(&HeaderMap::new(), Body::from(vec![0u8; 17]), 16, Duration::from_secs(1)).await;
        assert!(matches!(err, Err(BodyError::TooLarge(16))));
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "1000000".parse().unwrap());
        assert!(matches!(read_body(&h, Body::empty(), 16, Duration::from_secs(1)).await, Err(BodyError::TooLarge(_))));
        let never = futures_util::stream::pending::<Result<hyper::body::Frame<Bytes>, std::io::Error>>();
        let slow = Body::new(http_body_util::StreamBody::new(never));
        let err = read_body(&HeaderMap::new(), slow, 16, Duration::from_millis(50)).await;
        assert!(matches!(err, Err(BodyError::Timeout(_))));
    }
}
