//! Allocators and gameservers for tests: in-process, or as real processes on loopback.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arena_allocator::api::App;
use arena_allocator::auth::Keys;
use arena_allocator::metrics::Metrics;
use arena_allocator::ratelimit::{LimitConfig, Limiter};
use arena_allocator::registry::Registry;
use arena_allocator::service::{AllocationRules, Allocator};
use arena_sdk::ticket::TicketKey;
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(15);
pub const KEY: &str = "arena-dev-key";

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// An allocator served from this process.
pub struct LocalAllocator {
    pub base: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl LocalAllocator {
    pub async fn start<R: Registry>(registry: R, rules: AllocationRules, limits: LimitConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let allocator = Allocator::new(registry, rules, TicketKey::development(), Arc::new(Metrics::new()));
        let app = Arc::new(App { allocator, keys: Keys::new(vec![], vec![]), limiter: Limiter::new(limits) });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        arena_allocator::server::spawn(listener, app, async move {
            let _ = rx.await;
        });
        LocalAllocator { base: format!("http://{addr}"), shutdown: Some(tx) }
    }
}

impl Drop for LocalAllocator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A binary of the workspace, built beside this package's own (cargo builds every binary of the
/// workspace when the whole workspace is tested; run `cargo build --bins` before testing one
/// package alone).
pub fn workspace_bin(name: &str) -> PathBuf {
    let own = PathBuf::from(env!("CARGO_BIN_EXE_arena-allocator"));
    let path = own.with_file_name(name);
    assert!(path.exists(), "{} is missing: run `cargo build --bins` (scripts/test does)", path.display());
    path
}

/// An allocator process; `redis` selects the shared registry.
pub async fn allocator_process(redis: Option<(&str, &str)>, server_timeout_secs: f64) -> (Proc, String) {
    let addr = free_addr();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arena-allocator"));
    cmd.args(["serve", "--listen", &addr.to_string(), "--server-timeout-secs", &server_timeout_secs.to_string()]);
    if let Some((url, prefix)) = redis {
        cmd.args(["--redis-url", url, "--redis-prefix", prefix]);
    }
    for var in ["ARENA_TICKET_KEY", "ARENA_API_KEYS", "ARENA_SERVER_KEYS", "ARENA_REDIS_URL"] {
        cmd.env_remove(var);
    }
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start arena-allocator");
    let base = format!("http://{addr}");
    let p = Proc { child, name: format!("allocator@{addr}") };
    wait_http(&format!("{base}/readyz")).await;
    (p, base)
}

/// A gameserver process reporting to `allocator`.
pub async fn gameserver_process(
    allocator: &str,
    id: &str,
    region: &str,
    max_worlds: u32,
    capacity: u32,
) -> (Proc, String, String) {
    let (ws, http) = (free_addr(), free_addr());
    let child = Command::new(workspace_bin("arena-gameserver"))
        .args(["serve", "--ws-addr", &ws.to_string(), "--http-addr", &http.to_string(), "--server-id", id])
        .args(["--region", region, "--allocator-url", allocator])
        .args(["--max-worlds", &max_worlds.to_string(), "--world-capacity", &capacity.to_string()])
        .env_remove("ARENA_TICKET_KEY")
        .env_remove("ARENA_SERVER_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start arena-gameserver");
    let p = Proc { child, name: id.to_owned() };
    wait_http(&format!("http://{http}/readyz")).await;
    (p, format!("ws://{ws}/ws"), format!("http://{http}"))
}

pub async fn wait_http(url: &str) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POST /v1/allocations; the status and the JSON body.
pub async fn allocate(client: &reqwest::Client, base: &str, body: Value) -> (u16, Value) {
    let r = client.post(format!("{base}/v1/allocations")).bearer_auth(KEY).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).bearer_auth(KEY).send().await.unwrap().json().await.unwrap()
}

/// Wait until `pred` holds for `GET url`.
pub async fn wait_json(client: &reqwest::Client, url: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = get_json(client, url).await;
        if pred(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
