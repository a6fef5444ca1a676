//! Hostile or broken requests get their documented 4xx JSON error, and the allocator keeps serving.

mod common;

use arena_allocator::ratelimit::{LimitConfig, Rate};
use arena_allocator::registry::memory::MemoryRegistry;
use arena_allocator::registry::{Registry, Timing};
use arena_allocator::service::AllocationRules;
use arena_sdk::allocator_api::{Endpoints, Heartbeat, ServerState};
use common::{KEY, LocalAllocator};
use serde_json::{Value, json};

async fn with_server(limits: LimitConfig) -> (LocalAllocator, reqwest::Client) {
    let registry = MemoryRegistry::new(Timing::default());
    registry
        .heartbeat(&Heartbeat {
            server_id: "gs-1".into(),
            region: "us-west-2".into(),
            endpoints: Endpoints::websocket("ws://127.0.0.1:1/ws"),
            state: ServerState::Ready,
            max_worlds: 10,
            world_capacity: 30,
            worlds: vec![],
            load: None,
            version: None,
        })
        .await
        .unwrap();
    let a = LocalAllocator::start(registry, AllocationRules::default(), limits).await;
    let client = reqwest::Client::new();
    // The index refreshes a few times a second; wait until the server is known.
    common::wait_json(&client, &format!("{}/v1/regions", a.base), "the region", |v| {
        v.as_array().is_some_and(|r| !r.is_empty())
    })
    .await;
    (a, client)
}

async fn post_raw(client: &reqwest::Client, base: &str, key: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut req = client.post(format!("{base}/v1/allocations")).header("content-type", "application/json").body(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn code(v: &Value) -> (&str, Option<&str>) {
    (v["error"]["code"].as_str().unwrap_or("?"), v["error"]["field"].as_str())
}

#[tokio::test]
async fn bad_requests_get_named_errors() {
    let (a, client) = with_server(LimitConfig::default()).await;
    let base = &a.base;
    /// (what, API key, body, status, error code, field)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("malformed JSON", Some(KEY), b"{\"bot_id\": ".to_vec(), 400, "bad_request", None),
        ("not an object", Some(KEY), b"[1,2]".to_vec(), 400, "bad_request", None),
        ("missing bot_id", Some(KEY), b"{}".to_vec(), 400, "bad_request", None),
        ("unknown field", Some(KEY), br#"{"bot_id":"b","colour":"red"}"#.to_vec(), 400, "bad_request", None),
        ("bad bot id", Some(KEY), br#"{"bot_id":"a b"}"#.to_vec(), 400, "bad_request", Some("bot_id")),
        (
            "bot id of wrong type",
            Some(KEY),
            br#"{"bot_id":12345678901234567890}"#.to_vec(),
            400,
            "bad_request",
            Some("bot_id"),
        ),
        (
            "unknown region",
            Some(KEY),
            br#"{"bot_id":"b","regions":["mars-1"]}"#.to_vec(),
            400,
            "bad_request",
            Some("regions"),
        ),
        (
            "negative latency",
            Some(KEY),
            br#"{"bot_id":"b","latencies_ms":{"us-west-2":-5}}"#.to_vec(),
            400,
            "bad_request",
            Some("latencies_ms"),
        ),
        (
            "huge latency",
            Some(KEY),
            br#"{"bot_id":"b","latencies_ms":{"us-west-2":1e300}}"#.to_vec(),
            400,
            "bad_request",
            Some("latencies_ms"),
        ),
        (
            "bad scheduling",
            Some(KEY),
            br#"{"bot_id":"b","scheduling":"random"}"#.to_vec(),
            400,
            "bad_request",
            Some("scheduling"),
        ),
        ("missing key", None, br#"{"bot_id":"b"}"#.to_vec(), 401, "unauthorized", None),
        ("wrong key", Some("not-a-key"), br#"{"bot_id":"b"}"#.to_vec(), 401, "unauthorized", None),
        (
            "oversize body",
            Some(KEY),
            format!(r#"{{"bot_id":"b","pad":"{}"}}"#, "x".repeat(20_000)).into_bytes(),
            413,
            "payload_too_large",
            None,
        ),
    ];
    for (name, key, body, status, want_code, want_field) in cases {
        let (got_status, v) = post_raw(&client, base, key, body).await;
        assert_eq!(got_status, status, "{name}: {v}");
        let (c, f) = code(&v);
        assert_eq!(c, want_code, "{name}: {v}");
        if want_field.is_some() {
            assert_eq!(f, want_field, "{name}: {v}");
        }
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: {v}");
    }
    // Still serving.
    let (status, v) = common::allocate(&client, base, json!({"bot_id": "good", "regions": ["us-west-2"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["region"], "us-west-2");
    // Unknown endpoints and heartbeats with a client key are refused too.
    let r = client.get(format!("{base}/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r =
        client.post(format!("{base}/v1/servers/heartbeat")).bearer_auth("wrong").json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(format!("{base}/v1/servers/heartbeat"))
        .bearer_auth(KEY)
        .json(&json!({"server_id": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let limits = LimitConfig {
        per_ip: Rate { per_sec: 1.0, burst: 5.0 },
        per_key: Rate { per_sec: 1000.0, burst: 1000.0 },
        max_tracked: 100,
    };
    let (a, client) = with_server(limits).await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let r = client
            .post(format!("{}/v1/allocations", a.base))
            .bearer_auth(KEY)
            .json(&json!({"bot_id": format!("b{i}")}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if status == 429 {
            assert!(r.headers().get("retry-after").is_some());
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "rate_limited");
        }
        statuses.push(status);
    }
    // The waiting loop above used some of the burst; the rest is spent here and then refused.
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
}

/// Send raw bytes, read the whole answer: status and JSON body.
async fn raw_http(base: &str, request: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_refusal_is_json() {
    let (a, _) = with_server(LimitConfig::default()).await;
    let auth = format!("Authorization: Bearer {KEY}\r\n");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "wrong method",
            b"GET /v1/allocations HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec(),
            405,
            "method_not_allowed",
        ),
        (
            "bad path escape",
            format!("DELETE /v1/allocations/%FF%FE HTTP/1.1\r\nHost: a\r\n{auth}Connection: close\r\n\r\n")
                .into_bytes(),
            400,
            "bad_request",
        ),
        (
            "head too large",
            format!("GET /v1/regions HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n", "p".repeat(40_000)).into_bytes(),
            431,
            "headers_too_large",
        ),
        ("not HTTP", b"\x16\x03\x01\x02\x00 hello\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            "unknown endpoint",
            b"GET /v1/nothing HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec(),
            404,
            "not_found",
        ),
    ];
    for (name, request, status, code) in cases {
        let (got, v) = raw_http(&a.base, &request).await;
        assert_eq!((got, v["error"]["code"].as_str()), (status, Some(code)), "{name}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: {v}");
    }
    // Truncated JSON: the body is named as a whole, never a field "?".
    let body = br#"{"bot_id": "a""#;
    let req = format!(
        "POST /v1/allocations HTTP/1.1\r\nHost: a\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(body)
    );
    let (got, v) = raw_http(&a.base, req.as_bytes()).await;
    assert_eq!((got, v["error"]["code"].as_str()), (400, Some("bad_request")), "{v}");
    assert!(v["error"].get("field").is_none(), "no made-up field: {v}");
    // A body that never arrives: the deadline answers 408, in JSON.
    let req =
        format!("POST /v1/allocations HTTP/1.1\r\nHost: a\r\n{auth}Content-Length: 100\r\nConnection: close\r\n\r\n{{");
    let (got, v) = raw_http(&a.base, req.as_bytes()).await;
    assert_eq!((got, v["error"]["code"].as_str()), (408, Some("timeout")), "{v}");
}
