//! The QUIC transport over real QUIC on loopback, with the SDK's QUIC client: join, inputs
//! acknowledged, resume, ticket refusals, a frame over the limit, garbage, a client that never
//! joins, a wrong certificate pin, and a drain.

mod common;

use std::time::Duration;

use arena_gameserver::ServerConfig;
use arena_gameserver::config::QuicConfig;
use arena_sdk::Encoding;
use arena_sdk::client::ClientError;
use arena_sdk::protocol::{Command, Move, ServerMsg, close};
use arena_sdk::quic::{QuicClient, Trust};
use common::{TestServer, WAIT};

fn quic_config() -> ServerConfig {
    ServerConfig { quic: Some(QuicConfig { addr: "127.0.0.1:0".parse().unwrap(), cert: None }), ..common::config() }
}

async fn connect(s: &TestServer, enc: Encoding) -> QuicClient {
    let (addr, pin) = s.quic.clone().expect("QUIC served");
    QuicClient::connect(addr, "localhost", enc, &Trust::pinned_hex(&pin).unwrap()).await.expect("connect")
}

/// Receive until the server closes; the close code and what came before.
async fn closed(c: &mut QuicClient) -> (u16, Vec<ServerMsg>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_timeout(left).await {
            Ok(r) => seen.push(r.msg),
            Err(ClientError::Closed { code, .. }) => return (code, seen),
            Err(e) => panic!("expected a close, got {e}; saw {seen:?}"),
        }
    }
}

fn error_codes(msgs: &[ServerMsg]) -> Vec<&'static str> {
    msgs.iter()
        .filter_map(|m| match m {
            ServerMsg::Error(e) => Some(e.code.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_bot_joins_plays_and_its_inputs_are_acknowledged_in_both_encodings() {
    let s = TestServer::start(quic_config()).await;
    for (enc, bot) in [(Encoding::MsgPack, "q-msgpack"), (Encoding::Json, "q-json")] {
        let mut c = connect(&s, enc).await;
        let w = c.join(&s.ticket("qw", bot), Some("qw")).await.expect("join");
        assert_eq!(w.world, "qw");
        let seq = c.input(Command::Move(Move::By([1.0, 0.0]))).await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = c.recv_timeout(deadline - tokio::time::Instant::now()).await.expect("updates");
            if let ServerMsg::Update(u) = &r.msg
                && u.ack_seq >= seq
            {
                break;
            }
        }
        assert!(c.mirror().unwrap().bots().any(|b| b.id == w.bot), "the mirror follows the world: {bot}");
        c.leave().await;
    }
    s.stop().await;
}

#[tokio::test]
async fn a_dropped_connection_resumes_its_seat() {
    let s = TestServer::start(quic_config()).await;
    let mut c = connect(&s, Encoding::MsgPack).await;
    let w = c.join(&s.ticket("qr", "resumer"), Some("qr")).await.unwrap();
    c.abandon();
    let mut again = connect(&s, Encoding::MsgPack).await;
    let back = again.resume(&w.resume_token).await.expect("resume");
    assert_eq!(back.bot, w.bot, "the same seat");
    s.stop().await;
}

#[tokio::test]
async fn bad_tickets_are_refused_with_the_reason_and_a_close() {
    let s = TestServer::start(quic_config()).await;
    let mut c = connect(&s, Encoding::MsgPack).await;
    let err = c.join("not-a-ticket", Some("qt")).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused(ref e) if e.code.as_str() == "ticket_invalid"), "{err}");
    let (code, _) = closed(&mut c).await;
    assert_eq!(code, close::JOIN_REFUSED);
    s.stop().await;
}

#[tokio::test]
async fn a_frame_over_the_limit_is_refused_before_its_payload() {
    let s = TestServer::start(quic_config()).await;
    let mut c = connect(&s, Encoding::MsgPack).await;
    // A length of 1 GiB, and no payload: refused from the length alone.
    c.send_bytes(&(1u32 << 30).to_be_bytes()).await.unwrap();
    let (code, seen) = closed(&mut c).await;
    assert_eq!(code, close::MESSAGE_TOO_BIG);
    assert_eq!(error_codes(&seen), ["frame_too_large"]);
    s.stop().await;
}

#[tokio::test]
async fn garbage_frames_are_answered_and_then_cut_off() {
    let s = TestServer::start(quic_config()).await;
    let mut c = connect(&s, Encoding::MsgPack).await;
    let w = c.join(&s.ticket("qg", "noisy"), Some("qg")).await.unwrap();
    assert_eq!(w.world, "qg");
    for _ in 0..64 {
        if c.send_raw(&[0xc1, 0xff, 0x00]).await.is_err() {
            break;
        }
    }
    let (code, seen) = closed(&mut c).await;
    assert_eq!(code, close::POLICY_VIOLATION, "too many violations: {:?}", error_codes(&seen));
    assert!(error_codes(&seen).contains(&"malformed"), "{:?}", error_codes(&seen));
    // The server goes on: another bot joins.
    let mut ok = connect(&s, Encoding::MsgPack).await;
    ok.join(&s.ticket("qg", "quiet"), Some("qg")).await.expect("join after the noise");
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_never_joins_is_closed_at_the_join_deadline() {
    let cfg = ServerConfig { join_timeout: Duration::from_millis(500), ..quic_config() };
    let s = TestServer::start(cfg).await;
    // One that opens its control stream (a ping) but never joins: told why, then closed.
    let mut c = connect(&s, Encoding::Json).await;
    c.send(&arena_sdk::protocol::ClientMsg::Ping { nonce: 1 }).await.unwrap();
    let (code, seen) = closed(&mut c).await;
    assert_eq!(code, close::JOIN_TIMEOUT);
    assert_eq!(error_codes(&seen), ["not_joined"]);
    // One that never even opens it (no stream is open until written): closed all the same.
    let mut silent = connect(&s, Encoding::Json).await;
    let (code, _) = closed(&mut silent).await;
    assert_eq!(code, close::JOIN_TIMEOUT);
    s.stop().await;
}

#[tokio::test]
async fn a_wrong_pin_does_not_connect() {
    let s = TestServer::start(quic_config()).await;
    let (addr, _) = s.quic.clone().unwrap();
    let wrong = Trust::Pinned([7; 32]);
    assert!(QuicClient::connect(addr, "localhost", Encoding::MsgPack, &wrong).await.is_err());
    s.stop().await;
}

#[tokio::test]
async fn a_drain_closes_quic_bots_with_going_away() {
    let mut s = TestServer::start(quic_config()).await;
    let mut c = connect(&s, Encoding::MsgPack).await;
    c.join(&s.ticket("qd", "drained"), Some("qd")).await.unwrap();
    s.begin_shutdown();
    let (code, _) = closed(&mut c).await;
    assert_eq!(code, close::GOING_AWAY);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_its_connection_freed() {
    let cfg = ServerConfig {
        tick_hz: 50,
        max_queued_bytes: 4096,
        slow_client: Duration::from_secs(1),
        flush_timeout: Duration::from_secs(1),
        ..quic_config()
    };
    let s = TestServer::start(cfg).await;
    // A busy world: every tick carries changes for the idle reader.
    let mut talkers = Vec::new();
    for i in 0..8 {
        let mut t = connect(&s, Encoding::MsgPack).await;
        t.join(&s.ticket("qs", &format!("talker-{i}")), Some("qs")).await.unwrap();
        talkers.push(t);
    }
    // A client with a small receive window: the server is held back as soon as it stops reading.
    let (addr, pin) = s.quic.clone().unwrap();
    let trust = Trust::pinned_hex(&pin).unwrap();
    let mut idle =
        QuicClient::connect_with_window(addr, "localhost", Encoding::MsgPack, &trust, 8 * 1024).await.unwrap();
    idle.join(&s.ticket("qs", "idle"), Some("qs")).await.unwrap();
    let open = s.host.metrics().connections.get();
    assert_eq!(open, 9);
    // The idle one reads nothing from now on, while the others walk about.
    // Its receive window fills, then the server's send window (64 KiB) and its queue, then the
    // lag policy drops it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut step = 0f32;
    while s.host.metrics().connections.get() > 8 {
        assert!(tokio::time::Instant::now() < deadline, "the idle client is still connected");
        step += 1.0;
        // Within the input rate limit.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for t in &mut talkers {
            let _ = t.input(Command::Move(Move::To([step % 50.0, step % 30.0]))).await;
            // They read everything they are sent.
            while t.recv_timeout(Duration::from_millis(1)).await.is_ok() {}
        }
    }
    assert!(s.host.metrics().outbound_queued_bytes.get() <= 8 * 4096 + 4096, "queues stay bounded");
    // It was the idle one: the others play on; it reads what it had not, then the close.
    for t in &mut talkers {
        assert!(t.connection().close_reason().is_none(), "a talker was closed: {:?}", t.connection().close_reason());
    }
    let reason = tokio::time::timeout(Duration::from_secs(10), idle.connection().closed()).await.expect("closed");
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code.into_inner() == u64::from(close::SLOW_CONSUMER)),
        "{reason:?}"
    );
    for t in &mut talkers {
        let seq = t.input(Command::Say("still here".into())).await.expect("a talker is still connected");
        assert!(seq > 0);
    }
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_finishes_its_stream_is_closed_and_keeps_its_seat() {
    let s = TestServer::start(quic_config()).await;
    let mut c = connect(&s, Encoding::MsgPack).await;
    let w = c.join(&s.ticket("qf", "finisher"), Some("qf")).await.unwrap();
    c.finish_stream();
    let reason = tokio::time::timeout(WAIT, c.connection().closed()).await.expect("closed");
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(a) if a.error_code.into_inner() == u64::from(close::PROTOCOL_ERROR)),
        "{reason:?}"
    );
    let mut again = connect(&s, Encoding::MsgPack).await;
    assert_eq!(again.resume(&w.resume_token).await.expect("the seat was kept").bot, w.bot);
    s.stop().await;
}

#[tokio::test]
async fn past_the_connection_limit_an_attempt_is_refused_at_once() {
    // Two permits: the WebSocket listener holds one while it waits to accept (it takes its
    // permit before `accept`), the first QUIC bot the other.
    let cfg = ServerConfig { max_connections: 2, ..quic_config() };
    let s = TestServer::start(cfg).await;
    let mut first = connect(&s, Encoding::MsgPack).await;
    first.join(&s.ticket("ql", "first"), Some("ql")).await.unwrap();
    let (addr, pin) = s.quic.clone().unwrap();
    let started = std::time::Instant::now();
    let refused = QuicClient::connect(addr, "localhost", Encoding::MsgPack, &Trust::pinned_hex(&pin).unwrap()).await;
    assert!(refused.is_err(), "a second QUIC connection past the limit");
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once, not left to time out");
    // The first plays on.
    first.input(Command::Say("alone".into())).await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn a_configured_certificate_is_presented_and_verified_against_the_server_name() {
    let made = arena_testkit::certs::TestCert::new(&["gs-1.arena.test"]);
    let cfg = ServerConfig {
        quic: Some(QuicConfig { addr: "127.0.0.1:0".parse().unwrap(), cert: Some(made.files()) }),
        ..common::config()
    };
    let s = TestServer::start(cfg).await;
    let (addr, _) = s.quic.clone().unwrap();
    let trust = Trust::Roots(made.roots());

    let mut c = QuicClient::connect(addr, "gs-1.arena.test", Encoding::MsgPack, &trust).await.expect("verified");
    c.join(&s.ticket("qc", "verified"), Some("qc")).await.expect("join");
    let wrong_name = QuicClient::connect(addr, "other.arena.test", Encoding::MsgPack, &trust).await;
    assert!(wrong_name.is_err(), "the certificate does not name other.arena.test");
    s.stop().await;
}
