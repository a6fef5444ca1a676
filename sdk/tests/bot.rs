//! The self-reconnecting bot against real processes: an allocator and gameservers on loopback
//! (the workspace's binaries; `scripts/test` builds them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arena_sdk::bot::{Backoff, Bot, BotEvent, BotOptions, Seat};
use arena_sdk::protocol::Event;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const WAIT: Duration = Duration::from_secs(20);

fn bin(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(|d| d.parent()).unwrap().join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --bins` (scripts/test does)", path.display());
    path
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(url: &str) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !client.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(tokio::time::Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn allocator() -> (Proc, String) {
    let addr = free_addr();
    let child = Command::new(bin("arena-allocator"))
        // Heartbeats come every second; a loaded machine may delay one, so allow two.
        .args(["serve", "--listen", &addr.to_string(), "--server-timeout-secs", "2"])
        .env_remove("ARENA_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://{addr}");
    wait_ready(&format!("{base}/readyz")).await;
    (Proc(child), base)
}

async fn gameserver(allocator: &str, id: &str, public: Option<&str>, ws: SocketAddr) -> Proc {
    let http = free_addr();
    let mut cmd = Command::new(bin("arena-gameserver"));
    cmd.args(["serve", "--ws-addr", &ws.to_string(), "--http-addr", &http.to_string(), "--server-id", id]).args([
        "--allocator-url",
        allocator,
        "--region",
        "local",
    ]);
    if let Some(url) = public {
        cmd.args(["--public-ws-url", url]);
    }
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_ready(&format!("http://{http}/readyz")).await;
    Proc(child)
}

async fn wait_servers(allocator: &str, n: usize) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v: serde_json::Value = client
            .get(format!("{allocator}/v1/servers"))
            .bearer_auth("arena-dev-key")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v.as_array().is_some_and(|s| s.iter().filter(|x| x["alive"] == true).count() == n) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "servers never registered: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy whose connections can all be cut at once, to drop a bot's connection.
struct Proxy {
    conns: std::sync::Arc<tokio::sync::Mutex<JoinSet<()>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(listen: SocketAddr, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen).await.unwrap();
        let conns = std::sync::Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let set = std::sync::Arc::clone(&conns);
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                set.lock().await.spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        });
        Proxy { conns, _accept: accept }
    }

    /// Drop every proxied connection (both sides see a reset or EOF, no close frame).
    async fn cut(&self) {
        self.conns.lock().await.abort_all();
    }
}

async fn next_joined(bot: &mut Bot) -> Seat {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, bot.next_event()).await.expect("a join") {
            Some(BotEvent::Joined(seat)) => return seat,
            Some(BotEvent::Stopped { reason }) => panic!("stopped: {reason}"),
            Some(_) => {}
            None => panic!("bot ended"),
        }
    }
}

fn options(name: &str) -> BotOptions {
    BotOptions {
        backoff: Backoff { initial: Duration::from_millis(50), max: Duration::from_millis(500), jitter: 0.5 },
        ..BotOptions::new(name, "arena-dev-key")
    }
}

#[tokio::test]
async fn bot_plays_resumes_after_a_drop_and_shuts_down() {
    let (_alloc, base) = allocator().await;
    let (gs_ws, proxy_addr) = (free_addr(), free_addr());
    let proxy = Proxy::start(proxy_addr, gs_ws).await;
    let _gs = gameserver(&base, "gs-1", Some(&format!("ws://{proxy_addr}/ws")), gs_ws).await;
    wait_servers(&base, 1).await;

    let mut bot = Bot::connect(&base, options("resilient")).await.expect("connect");
    let first = next_joined(&mut bot).await;
    assert!(!first.resumed);
    bot.say("before the drop").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(BotEvent::Update(u)) = tokio::time::timeout_at(deadline, bot.next_event()).await.unwrap()
            && u.events.iter().any(|e| matches!(e, Event::Say { text, .. } if text == "before the drop"))
        {
            break;
        }
    }

    proxy.cut().await;
    let again = next_joined(&mut bot).await;
    assert!(again.resumed, "the seat is resumed, not reallocated");
    assert_eq!((again.bot, &again.world_id), (first.bot, &first.world_id));
    assert!(bot.with_world(|w| w.bot(first.bot).is_some()).unwrap(), "the mirror holds the bot after the resume");
    bot.move_to(10.0, 10.0).await.expect("inputs flow again");
    bot.shutdown().await;
}

#[tokio::test]
async fn bot_with_its_own_world_follows_it_to_another_server() {
    let (_alloc, base) = allocator().await;
    let mut a = gameserver(&base, "gs-a", None, free_addr()).await;
    let mut b = gameserver(&base, "gs-b", None, free_addr()).await;
    wait_servers(&base, 2).await;

    let opts = BotOptions { world_id: Some("home".into()), ..options("homebody") };
    let mut bot = Bot::connect(&base, opts).await.expect("connect");
    let first = next_joined(&mut bot).await;
    assert_eq!(first.world_id, "home");
    // Kill the server holding the world, whichever the allocator picked.
    let owner = if first.server_id == "gs-a" { &mut a } else { &mut b };
    let _ = owner.0.kill();
    let _ = owner.0.wait();
    // Resuming fails (the server is gone); the allocator re-places "home" once it times out.
    let deadline = tokio::time::Instant::now() + WAIT;
    let moved = loop {
        let seat = tokio::time::timeout_at(deadline, next_joined(&mut bot)).await.expect("rejoined");
        if seat.server_id != first.server_id {
            break seat;
        }
    };
    assert_eq!(moved.world_id, "home");
    assert!(!moved.resumed);
    bot.say("still here").await.unwrap();
    bot.shutdown().await;
}
