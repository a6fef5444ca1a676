//! The workspace's binaries as child processes, on port 0.
//!
//! Each is started with `--ready-file`: once it serves, it writes the addresses it bound, and
//! the test reads them there. No port is picked by the test, so none can be taken by another
//! test between picking and binding. Stderr goes to a log file the test can read; the process
//! is killed (after a SIGCONT, in case a test paused it) when its handle is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;

use crate::DEV_KEY;
use crate::http::eventually;
use crate::stores::unique;

/// How long a process may take to come up.
pub const START_LIMIT: Duration = Duration::from_secs(30);

/// The workspace binary `name`, built beside the test binaries (`cargo build --bins`, which
/// `scripts/test` runs, builds them all).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --bins` (scripts/test does)", path.display());
    path
}

/// A child process, killed when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    pub pid: u32,
    pub name: String,
    log: PathBuf,
    ready: PathBuf,
}

impl Proc {
    /// Start workspace binary `bin` with `args` plus `--ready-file <file>`.
    pub fn spawn(bin: &str, name: &str, args: &[String], env: &[(String, String)]) -> Proc {
        let dir = std::env::temp_dir();
        let tag = unique("arena-proc-");
        let (log, ready) = (dir.join(format!("{tag}.log")), dir.join(format!("{tag}.ready.json")));
        let mut cmd = Command::new(workspace_bin(bin));
        cmd.args(args).arg("--ready-file").arg(&ready).env("RUST_LOG", "info");
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("ARENA_")) {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        Proc { pid: child.id(), child, name: name.to_owned(), log, ready }
    }

    /// Wait for the ready file and read it.
    pub async fn ready<T: for<'de> Deserialize<'de>>(&mut self) -> T {
        let child = &mut self.child;
        let read = arena_service::ready::wait(&self.ready, START_LIMIT, || matches!(child.try_wait(), Ok(None))).await;
        match read {
            Ok(v) => v,
            Err(e) => panic!("{} did not come up: {e}\n{}", self.name, self.log()),
        }
    }

    /// Send a signal (`-STOP`, `-CONT`, `-TERM`, `-KILL`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.pid.to_string()]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {}", self.pid);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.pid.to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for the process to exit by itself, at most `limit`.
    pub async fn exited(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then wait (blocking, at most `limit`) for it to exit; SIGKILL if it does not.
    /// Its exit status, `None` when it had to be killed.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.ready);
    }
}

#[derive(Debug, Deserialize)]
struct AllocatorReady {
    http: SocketAddr,
}

/// How to start an allocator.
#[derive(Debug, Clone)]
pub struct AllocatorOpts {
    /// Redis URL and key prefix of a shared registry; in memory without.
    pub redis: Option<(String, String)>,
    pub server_timeout_secs: f64,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Default for AllocatorOpts {
    fn default() -> Self {
        AllocatorOpts { redis: None, server_timeout_secs: 3.0, extra: Vec::new(), env: Vec::new() }
    }
}

/// An allocator process.
#[derive(Debug)]
pub struct AllocatorProc {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// `http://<addr>`
    pub url: String,
}

/// Start an allocator on a free port and wait until it serves.
pub async fn allocator(opts: AllocatorOpts) -> AllocatorProc {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--server-timeout-secs".into(),
        opts.server_timeout_secs.to_string(),
    ];
    if let Some((url, prefix)) = &opts.redis {
        args.extend(["--redis-url".into(), url.clone(), "--redis-prefix".into(), prefix.clone()]);
    }
    args.extend(opts.extra.iter().cloned());
    let mut proc = Proc::spawn("arena-allocator", "allocator", &args, &opts.env);
    let ready: AllocatorReady = proc.ready().await;
    AllocatorProc { url: format!("http://{}", ready.http), addr: ready.http, proc }
}

#[derive(Debug, Deserialize)]
struct GameserverReady {
    ws: SocketAddr,
    http: SocketAddr,
    #[serde(default)]
    quic: Option<SocketAddr>,
    #[serde(default)]
    quic_cert_sha256: Option<String>,
}

/// How to start a gameserver.
#[derive(Debug, Clone)]
pub struct GameserverOpts {
    pub id: String,
    /// Allocator URLs to report to (none: standalone).
    pub allocators: Vec<String>,
    pub region: String,
    pub max_worlds: u32,
    pub capacity: u32,
    /// The WebSocket URL to advertise (a proxy in front, say).
    pub public_ws_url: Option<String>,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl GameserverOpts {
    pub fn new(id: &str, allocator: &str) -> Self {
        GameserverOpts {
            id: id.to_owned(),
            allocators: vec![allocator.to_owned()],
            region: "local".into(),
            max_worlds: 10,
            capacity: 30,
            public_ws_url: None,
            extra: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// A gameserver process.
#[derive(Debug)]
pub struct GameserverProc {
    pub proc: Proc,
    pub id: String,
    pub ws: SocketAddr,
    pub http: SocketAddr,
    /// `ws://<ws>/ws`
    pub ws_url: String,
    /// `http://<http>`
    pub http_url: String,
    /// The QUIC endpoint and its certificate's SHA-256, when served.
    pub quic: Option<(SocketAddr, String)>,
}

impl GameserverProc {
    /// The value of a metric on its `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.http_url)).await.unwrap().text().await.unwrap();
        crate::http::metric(&text, name).unwrap_or(0.0)
    }

    /// `/readyz`'s status code (0: no answer).
    pub async fn readyz(&self) -> u16 {
        let c = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        c.get(format!("{}/readyz", self.http_url)).send().await.map_or(0, |r| r.status().as_u16())
    }
}

/// Start a gameserver on free ports and wait until it is ready (with an allocator: holding a
/// lease).
pub async fn gameserver(opts: GameserverOpts) -> GameserverProc {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--ws-addr".into(),
        "127.0.0.1:0".into(),
        "--http-addr".into(),
        "127.0.0.1:0".into(),
        "--server-id".into(),
        opts.id.clone(),
        "--region".into(),
        opts.region.clone(),
        "--max-worlds".into(),
        opts.max_worlds.to_string(),
        "--world-capacity".into(),
        opts.capacity.to_string(),
        // The suite runs tests side by side on a small machine, which is busy by design: a
        // gameserver watching the machine's CPU, or holding its ticks to 10 ms there, would
        // refuse bots as overloaded (a test passes either in `extra` to watch it again).
        "--machine-cpu-target".into(),
        "0".into(),
        "--lateness-budget-ms".into(),
        "500".into(),
    ];
    if !opts.allocators.is_empty() {
        args.extend(["--allocator-url".into(), opts.allocators.join(",")]);
    }
    if let Some(url) = &opts.public_ws_url {
        args.extend(["--public-ws-url".into(), url.clone()]);
    }
    args.extend(opts.extra.iter().cloned());
    let mut proc = Proc::spawn("arena-gameserver", &opts.id, &args, &opts.env);
    let ready: GameserverReady = proc.ready().await;
    let gs = GameserverProc {
        id: opts.id,
        ws: ready.ws,
        http: ready.http,
        ws_url: format!("ws://{}/ws", ready.ws),
        http_url: format!("http://{}", ready.http),
        quic: ready.quic.zip(ready.quic_cert_sha256),
        proc,
    };
    let name = format!("{} to be ready", gs.id);
    eventually(&name, START_LIMIT, || async { (gs.readyz().await == 200).then_some(()) }).await;
    gs
}

/// Wait until the allocator at `url` counts `n` live servers.
pub async fn wait_servers(url: &str, n: usize) {
    let client = reqwest::Client::new();
    let what = format!("{n} live servers at {url}");
    eventually(&what, START_LIMIT, || async {
        let r = client.get(format!("{url}/v1/servers")).bearer_auth(DEV_KEY).send().await.ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        let alive = v.as_array()?.iter().filter(|s| s["alive"] == true && s["state"] == "ready").count();
        (alive >= n).then_some(())
    })
    .await;
}
