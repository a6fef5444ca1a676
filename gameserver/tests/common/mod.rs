//! A gameserver on free loopback ports, and helpers to talk to it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arena_gameserver::host::Host;
use arena_gameserver::load::LoadConfig;
use arena_gameserver::{Server, ServerConfig};
use arena_sdk::Encoding;
use arena_sdk::client::{Client, ClientError};
use arena_sdk::protocol::{ServerMsg, Welcome};
use arena_sdk::ticket::{Grant, TicketKey, mint};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub ws_url: String,
    pub ws_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The QUIC endpoint and its certificate's SHA-256 (hex), when the config serves QUIC.
    pub quic: Option<(SocketAddr, String)>,
    pub host: Arc<Host>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A config for tests: loopback, free ports, the machine's CPU not watched and a tick lateness
/// budget of 500 ms (the suite runs tests side by side on a small machine, busy by design: a
/// server holding its ticks to 10 ms there would refuse bots as overloaded; `load.rs` tests both
/// signals exactly).
pub fn config() -> ServerConfig {
    let defaults = ServerConfig::default();
    ServerConfig {
        ws_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        server_id: "gs-test".into(),
        load: LoadConfig { machine_target: 0.0, lateness_budget: Duration::from_millis(500), ..defaults.load },
        ..defaults
    }
}

impl TestServer {
    pub async fn start(cfg: ServerConfig) -> Self {
        let server = Server::bind(cfg).await.expect("bind");
        let ws_addr = server.ws_addr().unwrap();
        let http_addr = server.http_addr().unwrap();
        let quic = server.quic_addr().zip(server.quic_cert_sha256().map(str::to_owned));
        let host = Arc::clone(server.host());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = server.spawn(async move {
            let _ = rx.await;
        });
        TestServer {
            ws_url: format!("ws://{ws_addr}/ws"),
            ws_addr,
            http_addr,
            quic,
            host,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub async fn default() -> Self {
        Self::start(config()).await
    }

    /// A valid ticket signed with the development key.
    pub fn ticket(&self, world: &str, bot: &str) -> String {
        ticket_with(&TicketKey::development(), world, bot, None, 60)
    }

    /// Connect and join `world` as `bot`.
    pub async fn join(&self, enc: Encoding, world: &str, bot: &str) -> (Client, Welcome) {
        let mut c = Client::connect(&self.ws_url, enc).await.expect("connect");
        let w = c.join(&self.ticket(world, bot), Some(world)).await.expect("join");
        (c, w)
    }

    /// Begin the drain and wait until the server stopped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("server run");
        }
    }

    /// Trigger the drain without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http_addr, path).await
    }
}

pub fn ticket_with(key: &TicketKey, world: &str, bot: &str, server: Option<&str>, ttl: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    mint(key, &Grant { server, ..Grant::new(world, bot) }, ttl, now).unwrap().0
}

/// Minimal HTTP/1.1 GET over a fresh connection: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Receive until `pred` holds for a message (applied to the mirror on the way), or fail after `WAIT`.
pub async fn recv_until(c: &mut Client, pred: impl FnMut(&ServerMsg, &Client) -> bool) -> ServerMsg {
    recv_until_within(c, WAIT, pred).await
}

/// [`recv_until`], waiting at most `limit`.
pub async fn recv_until_within(
    c: &mut Client,
    limit: Duration,
    mut pred: impl FnMut(&ServerMsg, &Client) -> bool,
) -> ServerMsg {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let r = c.recv_timeout(left).await.unwrap_or_else(|e| panic!("waiting for a message: {e}"));
        if pred(&r.msg, c) {
            return r.msg;
        }
    }
}

/// Receive until the server closes the connection; returns the close code.
pub async fn recv_close(c: &mut Client) -> (u16, Vec<ServerMsg>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_timeout(left).await {
            Ok(r) => seen.push(r.msg),
            Err(ClientError::Closed { code, .. }) => return (code, seen),
            Err(e) => panic!("expected a close, got {e}; saw {seen:?}"),
        }
    }
}

/// The error codes among `msgs`.
pub fn error_codes(msgs: &[ServerMsg]) -> Vec<&'static str> {
    msgs.iter()
        .filter_map(|m| match m {
            ServerMsg::Error(e) => Some(e.code.as_str()),
            _ => None,
        })
        .collect()
}
