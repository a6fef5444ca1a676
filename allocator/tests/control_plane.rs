//! The control plane under the failures a fleet multiplies, with real processes and real Redis:
//! the registry's Redis paused, an allocator replica killed, server keys used for the wrong
//! server, one bot asking for many seats, and hostile HTTP clients.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arena_sdk::Encoding;
use arena_sdk::client::Client;
use arena_testkit::DEV_KEY;
use arena_testkit::http::eventually;
use arena_testkit::process::{AllocatorOpts, GameserverOpts, Proc, allocator, gameserver, wait_servers};
use arena_testkit::stores::{ThrowawayRedis, clear_redis, redis_prefix, shared_redis};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).pool_max_idle_per_host(64).build().unwrap()
}

/// One allocation request's fate.
#[derive(Debug, Clone)]
struct Answer {
    sent: Instant,
    took: Duration,
    status: u16,
    code: String,
}

#[tokio::test]
async fn a_redis_outage_is_answered_fast_and_truthfully() {
    let redis = ThrowawayRedis::start();
    let prefix = redis_prefix("outage-");
    let opts =
        AllocatorOpts { redis: Some((redis.url(), prefix)), server_timeout_secs: 5.0, ..AllocatorOpts::default() };
    let alloc = allocator(opts).await;
    let base = alloc.url.clone();
    let _gs = gameserver(GameserverOpts { max_worlds: 200, ..GameserverOpts::new("gs-1", &base) }).await;
    wait_servers(&base, 1).await;

    // 200 allocations per second, open loop, each with its own deadline far above what we ask.
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let http = client(Duration::from_secs(5));
    let load = {
        let (answers, http, base) = (Arc::clone(&answers), http.clone(), base.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut tasks = Vec::new();
            for i in 0..2_600u32 {
                tick.tick().await;
                let (answers, http, base) = (Arc::clone(&answers), http.clone(), base.clone());
                tasks.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let r = http
                        .post(format!("{base}/v1/allocations"))
                        .bearer_auth(DEV_KEY)
                        .json(&json!({"bot_id": format!("b-{i}")}))
                        .send()
                        .await;
                    let took = sent.elapsed();
                    let (status, code) = match r {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let v: Value = r.json().await.unwrap_or(Value::Null);
                            (status, v["error"]["code"].as_str().unwrap_or("").to_owned())
                        }
                        Err(e) => (0, format!("no answer: {e}")),
                    };
                    answers.lock().push(Answer { sent, took, status, code });
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.pause();
    let paused = Instant::now();
    // While Redis is out, readiness says so at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(100), "/readyz took {:?}", t.elapsed());
    assert_eq!(ready.status(), 503);
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.resume();
    let resumed = Instant::now();
    eprintln!("Redis paused for {:?}", resumed - paused);
    load.await.unwrap();

    let answers = answers.lock().clone();
    assert_eq!(answers.len(), 2_600);
    let slow: Vec<&Answer> = answers.iter().filter(|a| a.took > Duration::from_millis(1500)).collect();
    assert!(slow.is_empty(), "{} answers took over 1.5 s, e.g. {:?}", slow.len(), slow.first());
    let wrong: Vec<&Answer> = answers.iter().filter(|a| !(a.status == 200 || a.status == 503)).collect();
    assert!(wrong.is_empty(), "only 200 or 503: {} others, e.g. {:?}", wrong.len(), wrong.first());
    assert!(answers.iter().all(|a| a.code != "no_capacity"), "an outage is never 'no capacity'");
    let during = answers.iter().filter(|a| a.sent > paused && a.sent + a.took < resumed).count();
    let unavailable = answers.iter().filter(|a| a.status == 503).count();
    assert!(unavailable >= during * 9 / 10 && during > 500, "the outage was answered 503: {unavailable} of {during}");
    // Back within 2 s of Redis returning: everything sent later is granted.
    let late: Vec<&Answer> = answers.iter().filter(|a| a.sent > resumed + Duration::from_secs(2)).collect();
    assert!(late.len() > 100);
    assert!(late.iter().all(|a| a.status == 200), "after recovery: {:?}", late.iter().find(|a| a.status != 200));
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn a_dead_replica_costs_no_server_and_moves_no_world() {
    let prefix = redis_prefix("replicas-");
    let opts = AllocatorOpts {
        redis: Some((shared_redis(), prefix.clone())),
        server_timeout_secs: 3.0,
        ..AllocatorOpts::default()
    };
    let mut first = allocator(opts.clone()).await;
    let second = allocator(opts.clone()).await;
    let urls = vec![first.url.clone(), second.url.clone()];
    let gs = gameserver(GameserverOpts { allocators: urls.clone(), ..GameserverOpts::new("gs-r", &urls[0]) }).await;
    wait_servers(&second.url, 1).await;
    let http = client(Duration::from_secs(5));
    let (status, v) = common::allocate(&http, &second.url, json!({"bot_id": "stay"})).await;
    assert_eq!(status, 200, "{v}");
    let mut c = Client::connect(v["endpoints"]["ws"].as_str().unwrap(), Encoding::MsgPack).await.unwrap();
    c.join(v["ticket"].as_str().unwrap(), None).await.unwrap();
    let fence = v["fence"].as_u64().unwrap();
    let world = v["world_id"].as_str().unwrap().to_owned();

    // The replica the server reports to first dies, for five server timeouts.
    first.proc.kill();
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let servers = common::get_json(&http, &format!("{}/v1/servers", second.url)).await;
        assert_eq!(servers[0]["alive"], true, "the server never looks dead: {servers}");
        let (status, v) = common::allocate(&http, &second.url, json!({"bot_id": "stay", "world_id": world})).await;
        assert_eq!((status, v["fence"].as_u64()), (200, Some(fence)), "the world never moves: {v}");
        // Our client keeps its updates.
        c.recv_timeout(Duration::from_secs(2)).await.expect("updates keep coming");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(gs.metric("arena_lease_lost_total").await, 0.0, "no world was suspended");
    // The replica comes back (a new process on the same registry) and sees the same.
    let again = allocator(opts).await;
    wait_servers(&again.url, 1).await;
    clear_redis(&shared_redis(), &prefix).await;
}

#[tokio::test]
async fn server_keys_report_only_for_their_servers() {
    let env = vec![
        ("ARENA_API_KEYS".to_owned(), "caller-key".to_owned()),
        ("ARENA_SERVER_KEYS".to_owned(), "gs-eu-*=eu-key,gs-us-1=us-key".to_owned()),
    ];
    let alloc = allocator(AllocatorOpts { env: env.clone(), ..AllocatorOpts::default() }).await;
    let http = client(Duration::from_secs(5));
    let hb = |id: &str| {
        json!({"server_id": id, "region": "eu", "endpoints": {"ws": "ws://127.0.0.1:1/ws"}, "state": "ready",
               "max_worlds": 1, "world_capacity": 30, "worlds": []})
    };
    let post = |key: &'static str, body: Value| {
        let (http, url) = (http.clone(), format!("{}/v1/servers/heartbeat", alloc.url));
        async move {
            let r = http.post(url).bearer_auth(key).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(post("eu-key", hb("gs-eu-7")).await.0, 200);
    let (status, v) = post("eu-key", hb("gs-us-1")).await;
    assert_eq!(
        (status, v["error"]["code"].as_str(), v["error"]["field"].as_str()),
        (403, Some("forbidden"), Some("server_id"))
    );
    assert_eq!(post("us-key", hb("gs-us-1")).await.0, 200);
    assert_eq!(post("us-key", hb("gs-us-10")).await.0, 403, "an exact id is exact");
    assert_eq!(post("caller-key", hb("gs-eu-7")).await.0, 401, "caller keys report nothing");
    // A server key not bound to any server id is refused at start.
    let bare = vec![("ARENA_SERVER_KEYS".to_owned(), "just-a-key".to_owned())];
    let mut p =
        Proc::spawn("arena-allocator", "bad-keys", &["serve".into(), "--listen".into(), "127.0.0.1:0".into()], &bare);
    let status = p.exited(Duration::from_secs(10)).await.expect("it refuses to start");
    assert!(!status.success());
    assert!(p.log().contains("not bound to server ids"), "{}", p.log());
}

#[tokio::test]
async fn one_bot_gets_one_seat_however_often_it_asks() {
    let alloc = allocator(AllocatorOpts::default()).await;
    let gs = gameserver(GameserverOpts { max_worlds: 5, ..GameserverOpts::new("gs-1", &alloc.url) }).await;
    wait_servers(&alloc.url, 1).await;
    let http = client(Duration::from_secs(10));
    // Another bot first, so the index has a world to choose among.
    let (status, _) = common::allocate(&http, &alloc.url, json!({"bot_id": "other"})).await;
    assert_eq!(status, 200);
    let asks = (0..50).map(|_| common::allocate(&http, &alloc.url, json!({"bot_id": "greedy"})));
    let answers = futures_util::future::join_all(asks).await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{:?}", answers.iter().find(|(s, _)| *s != 200));
    let worlds: std::collections::BTreeSet<&str> =
        answers.iter().map(|(_, v)| v["world_id"].as_str().unwrap()).collect();
    assert_eq!(worlds.len(), 1, "one world: {worlds:?}");
    assert_eq!(answers.iter().filter(|(_, v)| v["existing"] == false).count(), 1, "one new seat, 49 times that seat");
    eventually("two seats counted", Duration::from_secs(5), || async {
        let v = common::get_json(&http, &format!("{}/v1/servers", alloc.url)).await;
        (v[0]["seats_used"] == 2).then_some(())
    })
    .await;
    // Joined with two of those tickets in turn: one seat, the newer connection holds it.
    let mut a = Client::connect(&gs.ws_url, Encoding::Json).await.unwrap();
    let wa = a.join(answers[0].1["ticket"].as_str().unwrap(), None).await.unwrap();
    let mut b = Client::connect(&gs.ws_url, Encoding::Json).await.unwrap();
    let wb = b.join(answers[1].1["ticket"].as_str().unwrap(), None).await.unwrap();
    assert_eq!(wa.bot, wb.bot, "the same seat");
    assert_eq!(wb.snapshot.bots.iter().filter(|x| x.name == "greedy").count(), 1);
    let (code, _) = common_close(&mut a).await;
    assert_eq!(code, 4005, "the older connection was replaced");
    // Seated now (once its server reported it): asking for another world is refused, naming
    // the seat; asking again returns the seat.
    let v = eventually("the seat known to the registry", Duration::from_secs(5), || async {
        let (s, v) = common::allocate(&http, &alloc.url, json!({"bot_id": "greedy", "world_id": "elsewhere"})).await;
        (s == 409).then_some(v)
    })
    .await;
    assert_eq!(v["error"]["code"], "seat_elsewhere", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains(&wb.world), "{v}");
    let (status, v) = common::allocate(&http, &alloc.url, json!({"bot_id": "greedy"})).await;
    assert_eq!((status, v["existing"].as_bool(), v["world_id"].as_str()), (200, Some(true), Some(wb.world.as_str())));
    drop(b);
}

async fn common_close(c: &mut Client) -> (u16, String) {
    loop {
        match c.recv_timeout(Duration::from_secs(5)).await {
            Ok(_) => {}
            Err(arena_sdk::client::ClientError::Closed { code, reason }) => return (code, reason),
            Err(e) => panic!("expected a close, got {e}"),
        }
    }
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn the_http_surface_cannot_be_exhausted() {
    let alloc =
        allocator(AllocatorOpts { extra: vec!["--max-connections".into(), "500".into()], ..AllocatorOpts::default() })
            .await;
    let addr = alloc.addr;
    let pid = alloc.proc.pid;
    let http = client(Duration::from_secs(10));
    let before = rss(pid);

    // 300 unauthenticated clients each announce and send a 2 MiB heartbeat body: the key is
    // checked first, nothing of the bodies is kept.
    let body = vec![b'x'; 2 * 1024 * 1024];
    let floods = (0..300).map(|_| {
        let body = body.clone();
        async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return 0u16 };
            let head = format!(
                "POST /v1/servers/heartbeat HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body).await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
        }
    });
    let statuses = futures_util::future::join_all(floods).await;
    assert!(statuses.iter().all(|s| *s == 401 || *s == 0), "{statuses:?}");
    let after = rss(pid);
    assert!(after < before + 64 * 1024 * 1024, "RSS {before} → {after}");

    // 600 half-sent requests hold at most the connection cap; they are closed after the head
    // deadline, and honest requests get through meanwhile or right after.
    let mut held = Vec::new();
    for _ in 0..600 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /v1/allocations HTTP/1.1\r\nHost: a\r\n").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(open_fds(pid) < 500 + 64, "open descriptors {} stay under the cap", open_fds(pid));
    let t = Instant::now();
    let r = http.get(format!("{}/v1/regions", alloc.url)).bearer_auth(DEV_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(8), "an honest request waited {:?}", t.elapsed());
    let mut closed = 0;
    for mut s in held {
        let mut buf = [0u8; 256];
        if matches!(tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf)).await, Ok(Ok(_) | Err(_))) {
            closed += 1;
        }
    }
    assert_eq!(closed, 600, "every half-sent request was closed by the head deadline");
}
