//! End to end on loopback, with real processes: allocators, gameservers that report to them, and
//! bots that allocate and join with the returned tickets.

mod common;

use std::time::Duration;

use arena_sdk::Encoding;
use arena_sdk::client::Client;
use arena_testkit::process::{AllocatorOpts, GameserverOpts, allocator, gameserver};
use arena_testkit::stores::{clear_redis, redis_prefix, shared_redis};
use common::{KEY, WAIT, allocate, wait_json};
use serde_json::{Value, json};

fn server(id: &str, allocator: &str, region: &str, max_worlds: u32, capacity: u32) -> GameserverOpts {
    GameserverOpts { region: region.into(), max_worlds, capacity, ..GameserverOpts::new(id, allocator) }
}

async fn join(v: &Value) -> Client {
    let ws = v["endpoints"]["ws"].as_str().unwrap();
    let mut c = Client::connect(ws, Encoding::MsgPack).await.unwrap_or_else(|e| panic!("connect {ws}: {e}"));
    let world = v["world_id"].as_str().unwrap();
    let w = c.join(v["ticket"].as_str().unwrap(), Some(world)).await.unwrap_or_else(|e| panic!("join {v}: {e}"));
    assert_eq!(w.world, world);
    c
}

#[tokio::test]
async fn two_regions_spill_over_and_a_killed_servers_world_moves() {
    // The embedded default: an in-memory registry, gameservers in separate processes.
    let alloc = allocator(AllocatorOpts::default()).await;
    let base = alloc.url.clone();
    let mut us = gameserver(server("gs-us", &base, "us-west-2", 1, 2)).await;
    let _eu = gameserver(server("gs-eu", &base, "eu-central-1", 3, 2)).await;
    let client = reqwest::Client::new();
    wait_json(&client, &format!("{base}/v1/regions"), "both regions ready", |v| {
        v.as_array().is_some_and(|r| r.len() == 2 && r.iter().all(|x| x["servers_ready"] == 1))
    })
    .await;

    let prefs = json!(["us-west-2", "eu-central-1"]);
    let mut bots = Vec::new();
    let mut placed = Vec::new();
    for i in 0..4 {
        let (status, v) = allocate(&client, &base, json!({"bot_id": format!("bot-{i}"), "regions": prefs})).await;
        assert_eq!(status, 200, "{v}");
        bots.push(join(&v).await);
        placed.push(v);
    }
    let regions: Vec<&str> = placed.iter().map(|v| v["region"].as_str().unwrap()).collect();
    assert_eq!(regions, ["us-west-2", "us-west-2", "eu-central-1", "eu-central-1"], "us is full after two: spill over");
    assert_eq!(placed[0]["world_id"], placed[1]["world_id"], "packed: one world fills first");
    assert_eq!(placed[0]["server_id"], "gs-us");

    // Measured latencies choose the region the same way.
    let (status, v) =
        allocate(&client, &base, json!({"bot_id": "far", "latencies_ms": {"eu-central-1": 140.0, "us-west-2": 20.0}}))
            .await;
    assert_eq!((status, v["region"].as_str()), (200, Some("eu-central-1")), "us full, eu next: {v}");

    // The us world is live and full.
    let us_world = placed[0]["world_id"].as_str().unwrap().to_owned();
    let old_fence = placed[0]["fence"].as_u64().unwrap();
    let (status, v) = allocate(&client, &base, json!({"bot_id": "late", "world_id": us_world})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (429, Some("world_unavailable")), "{v}");

    // The us server dies. Until the allocator stops hearing from it (3 s), bot-0 — which holds
    // a seat in the world — is sent back there; after, the world is placed on the server that is
    // left, with a higher fencing token, and bot-0 gets its seat there.
    us.proc.kill();
    drop(bots);
    let deadline = tokio::time::Instant::now() + WAIT;
    let moved = loop {
        let (status, v) =
            allocate(&client, &base, json!({"bot_id": "bot-0", "world_id": us_world, "regions": prefs})).await;
        if status == 200 && v["server_id"] != "gs-us" {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "the world never moved: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(moved["server_id"], "gs-eu");
    assert_eq!(moved["world_id"], us_world.as_str());
    let new_fence = moved["fence"].as_u64().unwrap();
    assert!(new_fence > old_fence, "fence {new_fence} > {old_fence}");
    let _c = join(&moved).await;

    // The fleet view shows the dead server as not alive.
    let servers = common::get_json(&client, &format!("{base}/v1/servers")).await;
    let us_row = servers.as_array().unwrap().iter().find(|s| s["server_id"] == "gs-us").unwrap();
    assert_eq!(us_row["alive"], false);
}

#[tokio::test]
async fn two_allocators_on_redis_race_for_the_last_seats() {
    let url = shared_redis();
    let prefix = redis_prefix("race-");
    let shared = AllocatorOpts {
        redis: Some((url.clone(), prefix.clone())),
        server_timeout_secs: 5.0,
        ..AllocatorOpts::default()
    };
    let a1 = allocator(shared.clone()).await;
    let a2 = allocator(shared).await;
    let (base1, base2) = (a1.url.clone(), a2.url.clone());
    let gs = gameserver(server("gs-race", &base1, "us-west-2", 2, 30)).await;
    let gs_http = gs.http_url.clone();
    let client = reqwest::Client::new();
    for base in [&base1, &base2] {
        wait_json(&client, &format!("{base}/v1/servers"), "the server in both indexes", |v| {
            v.as_array().is_some_and(|s| s.len() == 1 && s[0]["alive"] == true)
        })
        .await;
    }

    // 45 of the 60 seats are taken by bots that joined.
    let mut joined = Vec::new();
    for i in 0..45 {
        let base = if i % 2 == 0 { &base1 } else { &base2 };
        let (status, v) = allocate(&client, base, json!({"bot_id": format!("early-{i}")})).await;
        assert_eq!(status, 200, "{v}");
        joined.push(join(&v).await);
    }
    // Once heartbeats have turned the reservations into occupancy, 15 seats are left.
    for base in [&base1, &base2] {
        wait_json(&client, &format!("{base}/v1/servers"), "45 seats used", |v| v[0]["seats_used"] == 45).await;
    }

    // 240 concurrent requests, half to each allocator, race for those 15 seats.
    let requests = (0..240).map(|i| {
        let client = client.clone();
        let base = if i % 2 == 0 { base1.clone() } else { base2.clone() };
        async move {
            let r = client
                .post(format!("{base}/v1/allocations"))
                .bearer_auth(KEY)
                .json(&json!({"bot_id": format!("racer-{i}")}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    });
    let results = futures_util::future::join_all(requests).await;
    let won: Vec<&Value> = results.iter().filter(|(s, _)| *s == 200).map(|(_, v)| v).collect();
    let refused = results.iter().filter(|(s, v)| *s == 429 && v["error"]["code"] == "no_capacity").count();
    assert_eq!(won.len(), 15, "exactly the free seats are handed out");
    assert_eq!(refused, 225, "every other request gets 429: {:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
    // Every accepted allocation is joinable.
    for v in &won {
        joined.push(join(v).await);
    }
    let metrics = client.get(format!("{gs_http}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains(r#"arena_joins_total{result="world_full"}"#), "no join found a full world");
    wait_json(&client, &format!("{base2}/v1/servers"), "60 seats used", |v| v[0]["seats_used"] == 60).await;

    clear_redis(&url, &prefix).await;
}

#[tokio::test]
async fn an_allocation_names_the_quic_endpoint_and_its_certificate_and_a_quic_bot_joins_with_them() {
    let alloc = allocator(AllocatorOpts::default()).await;
    let base = alloc.url.clone();
    let quic = GameserverOpts {
        extra: vec!["--quic-addr".into(), "127.0.0.1:0".into()],
        ..server("gs-quic", &base, "quic-region", 2, 4)
    };
    let gs = gameserver(quic).await;
    let _plain = gameserver(server("gs-plain", &base, "ws-region", 2, 4)).await;
    let (quic_addr, cert_sha256) = gs.quic.clone().expect("the server serves QUIC");
    let client = reqwest::Client::new();
    wait_json(&client, &format!("{base}/v1/servers"), "both servers, one with QUIC", |v| {
        v.as_array()
            .is_some_and(|s| s.len() == 2 && s.iter().any(|x| x["quic"] == format!("quic://{quic_addr}").as_str()))
    })
    .await;

    let (status, v) = allocate(&client, &base, json!({"bot_id": "quic-bot", "regions": ["quic-region"]})).await;
    assert_eq!(status, 200, "{v}");
    let endpoints: arena_sdk::allocator_api::Endpoints = serde_json::from_value(v["endpoints"].clone()).unwrap();
    assert_eq!(endpoints.quic.as_deref(), Some(format!("quic://{quic_addr}").as_str()));
    assert_eq!(endpoints.quic_cert_sha256.as_deref(), Some(cert_sha256.as_str()), "the certificate made at start");
    let (host, port) = endpoints.quic_host_port().expect("host and port");
    let addr = std::net::SocketAddr::new(host.parse().unwrap(), port);
    let trust = arena_sdk::quic::Trust::pinned_hex(endpoints.quic_cert_sha256.as_deref().unwrap()).unwrap();
    let mut bot = arena_sdk::quic::QuicClient::connect(addr, "localhost", Encoding::MsgPack, &trust).await.unwrap();
    let world = v["world_id"].as_str().unwrap();
    let welcome = bot.join(v["ticket"].as_str().unwrap(), Some(world)).await.expect("join over QUIC");
    assert_eq!(welcome.world, world);

    // A configured certificate is verified by its chain: no hash to pin; the endpoint is the
    // one the server was told to publish.
    let made = arena_testkit::certs::TestCert::new(&["gs-named.arena.test"]);
    let (cert, key) = made.files();
    let named = GameserverOpts {
        extra: ["--quic-addr", "127.0.0.1:0", "--public-quic-url", "quic://gs-named.arena.test:7443"]
            .into_iter()
            .map(String::from)
            .chain(["--quic-cert".into(), cert.display().to_string(), "--quic-key".into(), key.display().to_string()])
            .collect(),
        ..server("gs-named", &base, "named-region", 2, 4)
    };
    let _named = gameserver(named).await;
    wait_json(&client, &format!("{base}/v1/regions"), "the named region", |v| {
        v.as_array().is_some_and(|r| r.iter().any(|x| x["region"] == "named-region" && x["servers_ready"] == 1))
    })
    .await;
    let (status, v) = allocate(&client, &base, json!({"bot_id": "named-bot", "regions": ["named-region"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["endpoints"]["quic"], "quic://gs-named.arena.test:7443", "{v}");
    assert!(v["endpoints"].get("quic_cert_sha256").is_none(), "{v}");

    // A server without QUIC: the answer an old client knows, no QUIC fields at all.
    let (status, v) = allocate(&client, &base, json!({"bot_id": "ws-bot", "regions": ["ws-region"]})).await;
    assert_eq!(status, 200, "{v}");
    let keys: Vec<&String> = v["endpoints"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["ws"], "{v}");
    join(&v).await;
}
