//! Leases and seats across failures, with real processes: a gameserver cut off from its
//! allocator stops serving before the allocator may move its worlds; a full world comes back
//! with every one of its bots after its server is killed, and after it drains; joins are not
//! lost when heartbeats fail for a while.

use std::time::{Duration, Instant};

use arena_sdk::Encoding;
use arena_sdk::bot::{Backoff, Bot, BotEvent, BotOptions, Seat};
use arena_sdk::client::{Client, ClientError};
use arena_sdk::protocol::{BotState, close};
use arena_testkit::http::eventually;
use arena_testkit::process::{AllocatorOpts, GameserverOpts, allocator, gameserver, wait_servers};
use arena_testkit::proxy::{Mode, Proxy};
use arena_testkit::stores::{clear_redis, redis_prefix, shared_redis};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn allocate(http: &reqwest::Client, base: &str, body: Value) -> (u16, Value) {
    arena_testkit::http::post(http, &format!("{base}/v1/allocations"), &body).await
}

/// Allocate (retrying while the registry warms up or the world moves) and join.
async fn allocate_and_join(http: &reqwest::Client, base: &str, bot: &str, world: &str) -> (Client, Value) {
    let v = eventually("an allocation", WAIT, || async {
        let (s, v) = allocate(http, base, json!({"bot_id": bot, "world_id": world})).await;
        (s == 200).then_some(v)
    })
    .await;
    let mut c = Client::connect(v["endpoints"]["ws"].as_str().unwrap(), Encoding::MsgPack).await.unwrap();
    c.join(v["ticket"].as_str().unwrap(), Some(world)).await.unwrap();
    (c, v)
}

#[tokio::test]
async fn a_cut_off_server_stops_serving_before_its_world_moves() {
    let alloc = allocator(AllocatorOpts { server_timeout_secs: 3.0, ..AllocatorOpts::default() }).await;
    let base = alloc.url.clone();
    // gs-a reaches the allocator only through a proxy we can black-hole; its clients do not.
    let to_alloc = Proxy::start(alloc.addr).await;
    let a = gameserver(GameserverOpts::new("gs-a", &format!("http://{}", to_alloc.addr))).await;
    wait_servers(&base, 1).await;
    let http = reqwest::Client::new();
    let (mut client, first) = allocate_and_join(&http, &base, "p1", "pw").await;
    assert_eq!(first["server_id"], "gs-a");
    let b = gameserver(GameserverOpts::new("gs-b", &base)).await;
    wait_servers(&base, 2).await;

    // The partition: gs-a's heartbeats stop reaching the allocator; its client stays connected.
    to_alloc.set(Mode::Blackhole);
    let cut = Instant::now();
    // Meanwhile, ask where "pw" lives until the allocator moves it.
    let poller = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            loop {
                let (s, v) = allocate(&http, &base, json!({"bot_id": "p2", "world_id": "pw"})).await;
                if s == 200 && v["server_id"] == "gs-b" {
                    return (Instant::now(), v);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // gs-a's lease runs out: its client is closed with 4007.
    let closed_at = loop {
        match client.recv_timeout(Duration::from_secs(10)).await {
            Ok(_) => {}
            Err(ClientError::Closed { code, .. }) => {
                assert_eq!(code, close::LEASE_LOST);
                break Instant::now();
            }
            Err(e) => panic!("expected a close, got {e}"),
        }
    };
    assert!(closed_at - cut < Duration::from_millis(2_400 + 600), "closed {:?} after the cut", closed_at - cut);
    assert_eq!(a.readyz().await, 503, "a server without a lease is not ready");
    let (moved_at, moved) = tokio::time::timeout(WAIT, poller).await.expect("the world moves").unwrap();
    assert!(closed_at < moved_at, "closed {:?} before the move at {:?}", closed_at - cut, moved_at - cut);
    eprintln!("cut → clients closed: {:?}; cut → world placed elsewhere: {:?}", closed_at - cut, moved_at - cut);
    // The new owner serves it; p2 joins there.
    let mut c2 = Client::connect(moved["endpoints"]["ws"].as_str().unwrap(), Encoding::MsgPack).await.unwrap();
    c2.join(moved["ticket"].as_str().unwrap(), Some("pw")).await.unwrap();
    // The partition heals: gs-a learns the world lives elsewhere and lets its copy go.
    to_alloc.set(Mode::Pass);
    eventually("gs-a lets go of its copy", WAIT, || async {
        (a.metric("arena_live_worlds").await == 0.0 && a.readyz().await == 200).then_some(())
    })
    .await;
    assert!(a.metric("arena_lease_lost_total").await >= 1.0);
    eventually("p2 seated on gs-b", WAIT, || async { (b.metric("arena_connected_bots").await >= 1.0).then_some(()) })
        .await;
}

fn options(name: &str, world: &str) -> BotOptions {
    BotOptions {
        world_id: Some(world.into()),
        backoff: Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(500), jitter: true },
        max_attempts: Some(400),
        timeout: Duration::from_secs(2),
        silence_timeout: Duration::from_secs(2),
        ..BotOptions::new(name, "arena-dev-key")
    }
}

/// Wait for the bot's next join on a server other than `not`.
async fn joined_elsewhere(bot: &mut Bot, not: &str) -> Seat {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, bot.next_event()).await.expect("rejoined in time") {
            Some(BotEvent::Joined(seat)) if seat.server_id != not => return seat,
            Some(BotEvent::Stopped { reason }) => panic!("bot stopped: {reason}"),
            Some(_) => {}
            None => panic!("bot ended"),
        }
    }
}

fn me(bot: &Bot) -> Option<BotState> {
    bot.with_world(|w| w.bot(w.me()).cloned()).flatten()
}

/// Until the bot's own state satisfies `pred`.
async fn until_me(bot: &mut Bot, what: &str, pred: impl Fn(&BotState) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !me(bot).is_some_and(|m| pred(&m)) {
        let ev = tokio::time::timeout_at(deadline, bot.next_event()).await;
        assert!(ev.is_ok(), "timed out waiting for {what}");
    }
}

/// Every bot of a full world gets its own bot back — same id, position, status, score — when
/// the world's server dies, and again when the next one drains.
#[tokio::test]
async fn a_full_world_comes_back_with_every_bot() {
    let prefix = redis_prefix("full-");
    let redis_args = vec!["--redis-url".to_owned(), shared_redis(), "--redis-prefix".to_owned(), prefix.clone()];
    let alloc = allocator(AllocatorOpts {
        redis: Some((shared_redis(), prefix.clone())),
        server_timeout_secs: 3.0,
        ..AllocatorOpts::default()
    })
    .await;
    let base = alloc.url.clone();
    let server = |id: &str| GameserverOpts { extra: redis_args.clone(), ..GameserverOpts::new(id, &base) };
    let mut a = gameserver(server("gs-a")).await;
    wait_servers(&base, 1).await;

    let mut bots = Vec::new();
    for i in 0..30 {
        let mut bot = Bot::connect(&base, options(&format!("f{i}"), "full")).await.expect("connect");
        let Some(BotEvent::Joined(seat)) = bot.next_event().await else { panic!("no join") };
        assert_eq!((seat.world_id.as_str(), seat.server_id.as_str()), ("full", "gs-a"));
        bots.push((bot, seat));
    }
    // Each bot walks to its own spot and sets its own status; then they all stand still.
    for (i, (bot, _)) in bots.iter_mut().enumerate() {
        let i = i as f32;
        bot.move_to(20.0 + 30.0 * i, 900.0 - 25.0 * i).await.unwrap();
        bot.act(format!("bot_{i}"), None).await.unwrap();
    }
    let mut before = Vec::new();
    for (i, (bot, _)) in bots.iter_mut().enumerate() {
        let (x, y, status) = (20.0 + 30.0 * i as f32, 900.0 - 25.0 * i as f32, format!("bot_{i}"));
        until_me(bot, "standing at its spot", |b| b.x == x && b.y == y && b.status == status).await;
        before.push(me(bot).unwrap());
    }
    // A hot snapshot of that (every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    for (phase, from, to) in [("SIGKILL", "gs-a", "gs-b"), ("drain", "gs-b", "gs-c")] {
        let next = gameserver(server(to)).await;
        wait_servers(&base, 2).await;
        // The old owner goes: killed, or drained (SIGTERM: it saves and says goodbye).
        let old = std::mem::replace(&mut a, next);
        old.proc.signal(if phase == "SIGKILL" { "-KILL" } else { "-TERM" });
        for (i, (bot, seat)) in bots.iter_mut().enumerate() {
            let back = joined_elsewhere(bot, from).await;
            assert_eq!(back.server_id, to, "{phase}: bot f{i}");
            assert_eq!(
                (back.world_id.as_str(), back.bot),
                ("full", seat.bot),
                "{phase}: bot f{i} got its own seat back"
            );
            let b = &before[i];
            until_me(bot, "its state back", |m| m.id == b.id).await;
            let now = me(bot).unwrap();
            assert_eq!((now.x, now.y, &now.status, now.score), (b.x, b.y, &b.status, b.score), "{phase}: bot f{i}");
        }
        let world = bots[0].0.with_world(|w| w.len()).unwrap();
        assert_eq!(world, 30, "{phase}: the world came back with its 30 bots");
        drop(old);
    }
    for (bot, _) in bots {
        bot.shutdown().await;
    }
    clear_redis(&shared_redis(), &prefix).await;
}

/// Joins made while heartbeats fail are reported once they succeed again: the allocator counts
/// each seat once, not as a seat and a reservation.
#[tokio::test]
async fn joins_are_not_lost_when_heartbeats_fail_for_a_while() {
    // A lease of 4.8 s: heartbeats may fail for 2.5 s without it running out.
    let alloc = allocator(AllocatorOpts { server_timeout_secs: 6.0, ..AllocatorOpts::default() }).await;
    let base = alloc.url.clone();
    let to_alloc = Proxy::start(alloc.addr).await;
    let gs = gameserver(GameserverOpts {
        max_worlds: 1,
        capacity: 3,
        ..GameserverOpts::new("gs-1", &format!("http://{}", to_alloc.addr))
    })
    .await;
    wait_servers(&base, 1).await;
    let http = reqwest::Client::new();
    let mut tickets = Vec::new();
    for i in 0..3 {
        let (s, v) = allocate(&http, &base, json!({"bot_id": format!("j{i}")})).await;
        assert_eq!(s, 200, "{v}");
        tickets.push(v);
    }
    // Heartbeats fail (shorter than the lease); the bots join meanwhile.
    to_alloc.set(Mode::Blackhole);
    let mut clients = Vec::new();
    for v in &tickets {
        let mut c = Client::connect(&gs.ws_url, Encoding::MsgPack).await.unwrap();
        c.join(v["ticket"].as_str().unwrap(), None).await.unwrap();
        clients.push(c);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(gs.metric("arena_heartbeat_failures_total").await >= 1.0);
    to_alloc.set(Mode::Pass);
    to_alloc.cut().await;
    // Once a heartbeat gets through, three seats are used — not three plus three reservations.
    let servers = eventually("the joins reported", WAIT, || async {
        let (_, v) = arena_testkit::http::get(&http, &format!("{base}/v1/servers")).await;
        (v[0]["seats_used"] == 3 && gs.metric("arena_heartbeats_total").await >= 2.0).then_some(v)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, v) = arena_testkit::http::get(&http, &format!("{base}/v1/servers")).await;
    assert_eq!(v[0]["seats_used"], 3, "still three a heartbeat later: {v} (first {servers})");
    let (s, v) = allocate(&http, &base, json!({"bot_id": "fourth"})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (429, Some("no_capacity")), "{v}");
    assert_eq!(gs.metric("arena_lease_lost_total").await, 0.0);
}
