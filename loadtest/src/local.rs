//! `--local`: start the servers as child processes on loopback, wait until they are ready, stop
//! them gracefully at the end. Each binds port 0 and names the ports it got in its ready file
//! (`--ready-file`), so there is no race between picking a free port and binding it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// A server the swarm started.
#[derive(Debug)]
pub struct LocalProcess {
    pub name: String,
    pub pid: u32,
    /// Its HTTP address (health, metrics; the allocator's API).
    pub http: SocketAddr,
    child: Child,
}

/// What a server writes to its ready file: the addresses it bound.
#[derive(Debug, serde::Deserialize)]
struct Ready {
    http: SocketAddr,
}

/// The binary `name` beside this executable (as `cargo build` lays them out), unless given.
pub fn sibling_binary(given: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!("{} not found; build it first (cargo build --release -p {name}) or pass its path", path.display());
    }
    Ok(path)
}

/// GET `path` on `addr`; the status code.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    String::from_utf8_lossy(&buf).split(' ').nth(1)?.parse().ok()
}

/// Start `bin` with `args` and wait (up to 15 s) for its ready file; then for `/readyz`.
async fn spawn(bin: &Path, name: &str, args: &[String], log_dir: &Path) -> anyhow::Result<LocalProcess> {
    let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
    let ready_file = log_dir.join(format!("{name}.ready.json"));
    let _ = std::fs::remove_file(&ready_file);
    let mut child = Command::new(bin)
        .args(args)
        .arg("--ready-file")
        .arg(&ready_file)
        .env_remove("ARENA_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("child pid")?;
    let limit = Duration::from_secs(15);
    let ready: Ready = arena_service::ready::wait(&ready_file, limit, || matches!(child.try_wait(), Ok(None)))
        .await
        .with_context(|| format!("{name} did not start (log: {})", log_dir.join(format!("{name}.log")).display()))?;
    let mut p = LocalProcess { name: name.to_owned(), pid, http: ready.http, child };
    p.wait_ready(limit).await?;
    Ok(p)
}

/// Start `arena-allocator serve` (in-memory registry) and wait for `/readyz`; its base URL.
pub async fn start_allocator(bin: &Path, log_dir: &Path) -> anyhow::Result<(LocalProcess, String)> {
    // The swarm comes from one address with one key: lift the request limits.
    let args: Vec<String> =
        ["serve", "--listen", "127.0.0.1:0", "--key-rate", "1000000", "--ip-rate", "1000000"].map(String::from).into();
    let p = spawn(bin, "allocator", &args, log_dir).await?;
    let url = format!("http://{}", p.http);
    Ok((p, url))
}

/// Start `arena-gameserver serve` number `i`, reporting to `allocator`, and wait for `/readyz`.
pub async fn start_gameserver(
    bin: &Path,
    i: usize,
    max_worlds: usize,
    log_dir: &Path,
    allocator: &str,
    extra: &[String],
) -> anyhow::Result<LocalProcess> {
    let name = format!("gs-{i}");
    let args: Vec<String> = vec![
        "serve".into(),
        "--ws-addr".into(),
        "127.0.0.1:0".into(),
        "--http-addr".into(),
        "127.0.0.1:0".into(),
        "--server-id".into(),
        name.clone(),
        "--max-worlds".into(),
        max_worlds.to_string(),
        "--allocator-url".into(),
        allocator.to_owned(),
        "--region".into(),
        "local".into(),
    ];
    let args: Vec<String> = args.into_iter().chain(extra.iter().cloned()).collect();
    spawn(bin, &name, &args, log_dir).await
}

/// Wait until the allocator counts `n` live servers.
pub async fn wait_registered(allocator: &str, key: &str, n: usize) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let servers: serde_json::Value = client
            .get(format!("{allocator}/v1/servers"))
            .bearer_auth(key)
            .send()
            .await?
            .json()
            .await
            .unwrap_or_default();
        let alive = servers.as_array().map_or(0, |s| s.iter().filter(|x| x["alive"] == true).count());
        if alive >= n {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the allocator sees {alive} of {n} gameservers after 15 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl LocalProcess {
    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if http_status(self.http, "/readyz").await == Some(200) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited during start: {status}", self.name);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} not ready after {limit:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then wait for the drain (SIGKILL after `limit`).
    pub async fn stop(mut self, limit: Duration) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        if tokio::time::timeout(limit, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// The Prometheus text exposition at `http://<addr>/metrics` (empty when it does not answer
/// within 5 s).
async fn metrics_text(addr: SocketAddr) -> String {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch).await.ok().flatten().unwrap_or_default()
}

/// The value of the unlabelled metric `name` at `http://<addr>/metrics`.
pub async fn gauge(addr: SocketAddr, name: &str) -> Option<f64> {
    metrics_text(addr).await.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The counters (`*_total`) of a Prometheus text exposition at `http://<addr>/metrics`.
pub async fn counters(addr: SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for line in metrics_text(addr).await.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        if !line.starts_with('#')
            && name.contains("_total")
            && !name.contains("_bucket")
            && let Ok(v) = value.parse::<f64>()
        {
            out.insert(name.to_owned(), v);
        }
    }
    out
}
