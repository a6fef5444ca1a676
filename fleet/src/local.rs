//! The local backend: the allocator and every region's gameservers as processes on this
//! machine, on loopback ports the processes pick themselves (port 0; each writes what it bound
//! to its ready file). Each process logs to `<log dir>/<name>.log`; a drain is SIGTERM, a kill
//! SIGKILL; a process that exits is reported as exited, and the controller decides what follows.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::process::{Child, Command};

use crate::backend::{Backend, Process, ServerRequest};
use crate::spec::AllocatorSpec;

/// Where the binaries are and where logs go.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub gameserver_bin: PathBuf,
    pub allocator_bin: PathBuf,
    pub log_dir: PathBuf,
}

impl LocalConfig {
    /// The binaries beside this executable (as `cargo build` lays them out), unless given.
    pub fn beside_me(
        gameserver: Option<PathBuf>,
        allocator: Option<PathBuf>,
        log_dir: PathBuf,
    ) -> anyhow::Result<Self> {
        let me = std::env::current_exe()?;
        let find = |given: Option<PathBuf>, name: &str| -> anyhow::Result<PathBuf> {
            let path = given.unwrap_or_else(|| me.with_file_name(name));
            if !path.exists() {
                bail!("{} not found: build it first (cargo build --release --bins) or pass its path", path.display());
            }
            Ok(path)
        };
        Ok(LocalConfig {
            gameserver_bin: find(gameserver, "arena-gameserver")?,
            allocator_bin: find(allocator, "arena-allocator")?,
            log_dir,
        })
    }
}

/// What a server's ready file says (the fields the fleet needs).
#[derive(Debug, Deserialize)]
struct Ready {
    #[serde(default)]
    ws_url: Option<String>,
    http: SocketAddr,
}

fn spawn(bin: &Path, args: &[String], log_dir: &Path, name: &str) -> anyhow::Result<(Child, PathBuf)> {
    std::fs::create_dir_all(log_dir)?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_dir.join(format!("{name}.log")))?;
    let ready = log_dir.join(format!("{name}.ready.json"));
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(bin)
        .args(args)
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok((child, ready))
}

fn read_ready(path: &Path) -> Option<Ready> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// SIGTERM to `pid` (no unsafe code: the `kill` command).
fn terminate(pid: u32) {
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}

/// The allocator process of a local fleet.
#[derive(Debug)]
pub struct LocalAllocator {
    child: Child,
    pub url: String,
    pub pid: u32,
}

impl LocalAllocator {
    /// Start `arena-allocator serve` on a loopback port and wait (15 s at most) until it serves.
    pub async fn start(cfg: &LocalConfig, spec: &AllocatorSpec, listen: &str) -> anyhow::Result<Self> {
        let mut args: Vec<String> = vec!["serve".into(), "--listen".into(), listen.into()];
        if let Some(url) = &spec.redis_url {
            args.extend(["--redis-url".into(), url.clone()]);
        }
        if let Some(t) = spec.server_timeout_secs {
            args.extend(["--server-timeout-secs".into(), t.to_string()]);
        }
        // One backend (the load tester, or the arena's orchestrator) allocates for many bots.
        args.extend(["--key-rate".into(), "1000000".into(), "--ip-rate".into(), "1000000".into()]);
        args.extend(spec.args.iter().cloned());
        let (mut child, ready) = spawn(&cfg.allocator_bin, &args, &cfg.log_dir, "allocator")?;
        let pid = child.id().context("allocator pid")?;
        let r: Ready =
            arena_service::ready::wait(&ready, Duration::from_secs(15), || matches!(child.try_wait(), Ok(None)))
                .await
                .with_context(|| {
                    format!("the allocator did not start (see {})", cfg.log_dir.join("allocator.log").display())
                })?;
        Ok(LocalAllocator { child, url: format!("http://{}", r.http), pid })
    }

    /// SIGTERM, then wait for it to exit (SIGKILL after `limit`).
    pub async fn stop(mut self, limit: Duration) {
        terminate(self.pid);
        if tokio::time::timeout(limit, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

#[derive(Debug)]
struct LocalServer {
    child: Child,
    pid: u32,
    ready_file: PathBuf,
    ws_url: Option<String>,
    exited: Option<Option<i32>>,
}

/// Gameservers as processes on this machine.
#[derive(Debug)]
pub struct LocalBackend {
    cfg: LocalConfig,
    servers: BTreeMap<String, LocalServer>,
}

impl LocalBackend {
    pub fn new(cfg: LocalConfig) -> Self {
        LocalBackend { cfg, servers: BTreeMap::new() }
    }

    pub fn log_dir(&self) -> &Path {
        &self.cfg.log_dir
    }

    /// Process id of a running server.
    pub fn pid(&self, id: &str) -> Option<u32> {
        self.servers.get(id).filter(|s| s.exited.is_none()).map(|s| s.pid)
    }

    /// Drain every server and wait for them (SIGKILL after `limit`).
    pub async fn drain_all(&mut self, limit: Duration) {
        for s in self.servers.values().filter(|s| s.exited.is_none()) {
            terminate(s.pid);
        }
        let deadline = tokio::time::Instant::now() + limit;
        for s in self.servers.values_mut() {
            if s.exited.is_none() && tokio::time::timeout_at(deadline, s.child.wait()).await.is_err() {
                let _ = s.child.kill().await;
            }
        }
    }
}

impl Backend for LocalBackend {
    async fn start(&mut self, req: &ServerRequest) -> anyhow::Result<()> {
        let t = &req.template;
        let mut args: Vec<String> = [
            "serve",
            "--ws-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--server-id",
            &req.id,
            "--region",
            &req.region,
            "--max-worlds",
            &t.max_worlds.to_string(),
            "--world-capacity",
            &t.world_capacity.to_string(),
            "--tick-hz",
            &t.tick_hz.to_string(),
            "--server-version",
            &t.version,
            "--allocator-url",
            &req.allocators.join(","),
        ]
        .map(String::from)
        .into();
        args.extend(t.args.iter().cloned());
        let (child, ready_file) = spawn(&self.cfg.gameserver_bin, &args, &self.cfg.log_dir, &req.id)?;
        let pid = child.id().context("gameserver pid")?;
        self.servers.insert(req.id.clone(), LocalServer { child, pid, ready_file, ws_url: None, exited: None });
        Ok(())
    }

    async fn drain(&mut self, id: &str) -> anyhow::Result<()> {
        if let Some(s) = self.servers.get(id).filter(|s| s.exited.is_none()) {
            terminate(s.pid);
        }
        Ok(())
    }

    async fn kill(&mut self, id: &str) -> anyhow::Result<()> {
        if let Some(s) = self.servers.get_mut(id).filter(|s| s.exited.is_none()) {
            s.child.start_kill()?;
        }
        Ok(())
    }

    async fn observe(&mut self) -> Vec<(String, Process)> {
        let mut out = Vec::with_capacity(self.servers.len());
        for (id, s) in &mut self.servers {
            if s.exited.is_none()
                && let Ok(Some(status)) = s.child.try_wait()
            {
                s.exited = Some(status.code());
            }
            let state = match s.exited {
                Some(code) => Process::Exited { code },
                None => {
                    if s.ws_url.is_none() {
                        s.ws_url =
                            read_ready(&s.ready_file).map(|r| r.ws_url.unwrap_or_else(|| format!("http://{}", r.http)));
                    }
                    match &s.ws_url {
                        Some(ws_url) => Process::Running { ws_url: ws_url.clone() },
                        None => Process::Starting,
                    }
                }
            };
            out.push((id.clone(), state));
        }
        out
    }

    fn forget(&mut self, id: &str) {
        if let Some(s) = self.servers.remove(id) {
            let _ = std::fs::remove_file(&s.ready_file);
        }
    }
}
