//! Health, readiness and metrics over HTTP, and the graceful drain.

mod common;

use std::time::Duration;

use arena_sdk::Encoding;
use arena_sdk::protocol::close;
use common::{TestServer, recv_close};

#[tokio::test]
async fn health_ready_and_metrics() {
    let server = TestServer::default().await;
    assert_eq!(server.http_get("/healthz").await, (200, "ok\n".into()));
    assert_eq!(server.http_get("/readyz").await, (200, "ready\n".into()));
    let (_c, _) = server.join(Encoding::Json, "w", "a").await;
    // Seat gauges are refreshed every second.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let (status, body) = server.http_get("/metrics").await;
        assert_eq!(status, 200);
        for name in [
            "arena_live_worlds 1",
            "arena_world_capacity 334",
            "arena_tick_duration_seconds_bucket",
            "arena_bytes_sent_total",
            "arena_clients_resynced_total",
            "arena_outbound_queued_bytes",
            "arena_input_queue",
        ] {
            assert!(body.contains(name), "{name} missing from\n{body}");
        }
        if body.contains("arena_connected_bots 1") && body.contains(r#"arena_joins_total{result="joined"} 1"#) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "gauges never showed the bot:\n{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.http_get("/nope").await.0, 404);
    server.stop().await;
}

#[tokio::test]
async fn drain_tells_clients_and_finishes() {
    let mut server = TestServer::default().await;
    let (mut a, _) = server.join(Encoding::MsgPack, "w", "a").await;
    let (mut b, _) = server.join(Encoding::Json, "w2", "b").await;
    server.begin_shutdown();
    // Readiness flips as soon as the drain starts (the clients have not answered yet).
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while server.http_get("/readyz").await != (503, "draining\n".into()) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(recv_close(&mut a).await.0, close::GOING_AWAY);
    assert_eq!(recv_close(&mut b).await.0, close::GOING_AWAY);
    tokio::time::timeout(Duration::from_secs(5), server.stop()).await.expect("drain finishes within its bound");
}
