//! `--local`: start the servers as child processes on loopback, wait until they are ready, stop
//! them gracefully at the end.

use std::net::{SocketAddr, TcpListener};
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
    pub ws: SocketAddr,
    pub http: SocketAddr,
    child: Child,
}

/// A free loopback port (bound and released; a tiny race is acceptable for a test harness).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
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

/// Start `arena-gameserver serve` number `i` and wait for `/readyz`.
pub async fn start_gameserver(bin: &Path, i: usize, max_worlds: usize, log_dir: &Path) -> anyhow::Result<LocalProcess> {
    let (ws, http) = (free_port()?, free_port()?);
    let name = format!("gs-{i}");
    let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
    let child = Command::new(bin)
        .args(["serve", "--ws-addr", &ws.to_string(), "--http-addr", &http.to_string(), "--server-id", &name])
        .args(["--max-worlds", &max_worlds.to_string()])
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("child pid")?;
    let mut p = LocalProcess { name, pid, ws, http, child };
    p.wait_ready(Duration::from_secs(15)).await?;
    Ok(p)
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
