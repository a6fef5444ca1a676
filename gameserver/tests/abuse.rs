//! Hostile clients get typed errors or closes; the other bots of the world keep playing.

mod common;

use std::time::Duration;

use arena_gameserver::ServerConfig;
use arena_sdk::Encoding;
use arena_sdk::client::Client;
use arena_sdk::codec::encode;
use arena_sdk::mirror::SessionEvent;
use arena_sdk::protocol::{ClientMsg, Command, Input, Move, ServerMsg, close};
use common::{TestServer, config, error_codes, recv_close, recv_until};
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The bystander is still served: consecutive updates, and its input is acknowledged.
async fn assert_still_served(c: &mut Client) {
    let mut ticks = Vec::new();
    while ticks.len() < 10 {
        let r = c.recv_timeout(common::WAIT).await.expect("bystander keeps receiving");
        if let ServerMsg::Update(u) = &r.msg {
            assert_eq!(r.event, SessionEvent::Updated, "no gap at tick {}", u.tick);
            ticks.push(u.tick);
        }
    }
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
    let seq = c.input(Command::Move(Move::By([1.0, 1.0]))).await.unwrap();
    recv_until(c, |m, _| matches!(m, ServerMsg::Update(u) if u.ack_seq == seq)).await;
}

async fn send_text(c: &mut Client, text: &str) {
    c.ws_mut().send(Message::Text(text.to_owned().into())).await.unwrap();
}

async fn next_error(c: &mut Client) -> &'static str {
    let m = recv_until(c, |m, _| matches!(m, ServerMsg::Error(_))).await;
    error_codes(&[m])[0]
}

#[tokio::test]
async fn malformed_messages_get_typed_errors_and_the_connection_lives_on() {
    let server = TestServer::default().await;
    let (mut bystander, _) = server.join(Encoding::MsgPack, "arena", "bystander").await;
    let (mut c, _) = server.join(Encoding::Json, "arena", "sloppy").await;

    send_text(&mut c, "{not json").await;
    assert_eq!(next_error(&mut c).await, "malformed");
    send_text(&mut c, r#"{"type":"teleport","to":[1,2]}"#).await;
    assert_eq!(next_error(&mut c).await, "unknown_type");
    send_text(&mut c, r#"{"type":"input","seq":"one","say":"x"}"#).await;
    assert_eq!(next_error(&mut c).await, "malformed");
    send_text(&mut c, r#"{"type":"input","seq":1}"#).await;
    assert_eq!(next_error(&mut c).await, "invalid_input");
    send_text(&mut c, &format!(r#"{{"type":"input","seq":2,"say":"{}"}}"#, "x".repeat(281))).await;
    assert_eq!(next_error(&mut c).await, "chat_too_long");
    c.ws_mut().send(Message::Binary(vec![0x80u8].into())).await.unwrap();
    assert_eq!(next_error(&mut c).await, "wrong_frame_type");
    send_text(&mut c, r#"{"type":"join","ticket":"x"}"#).await;
    assert_eq!(next_error(&mut c).await, "already_joined");

    // Still a working connection.
    c.send(&ClientMsg::Ping { nonce: 77 }).await.unwrap();
    recv_until(&mut c, |m, _| matches!(m, ServerMsg::Pong { nonce: 77 })).await;
    assert_still_served(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn oversize_frame_is_refused_and_closed() {
    let server = TestServer::default().await;
    let (mut bystander, _) = server.join(Encoding::Json, "arena", "bystander").await;
    let (mut c, _) = server.join(Encoding::MsgPack, "arena", "big").await;
    c.ws_mut().send(Message::Binary(vec![0x90u8; 64 * 1024].into())).await.unwrap();
    let (code, seen) = recv_close(&mut c).await;
    assert_eq!(code, close::MESSAGE_TOO_BIG);
    assert!(error_codes(&seen).contains(&"frame_too_large"), "{seen:?}");
    assert_still_served(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn input_flood_is_limited_then_closed() {
    let server = TestServer::default().await;
    let (mut bystander, _) = server.join(Encoding::Json, "arena", "bystander").await;
    let (mut c, _) = server.join(Encoding::MsgPack, "arena", "flooder").await;
    for seq in 1..=500u32 {
        let bytes = encode(Encoding::MsgPack, &ClientMsg::Input(Input::new(seq, Command::Say("spam".into())))).unwrap();
        if c.send_raw(bytes).await.is_err() {
            break; // the server may close before the flood ends
        }
    }
    let (code, seen) = recv_close(&mut c).await;
    assert_eq!(code, close::POLICY_VIOLATION);
    let codes = error_codes(&seen);
    assert!(codes.iter().filter(|c| **c == "rate_limited").count() >= 5, "{codes:?}");
    assert_still_served(&mut bystander).await;
    server.stop().await;
}

/// Open a raw WebSocket (JSON) and return the socket after the 101.
async fn raw_ws(server: &TestServer) -> TcpStream {
    let mut s = TcpStream::connect(server.ws_addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: arena.v1.json\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    while !buf.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.unwrap();
        buf.push(byte[0]);
    }
    assert!(buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&buf));
    s
}

/// Read server frames until EOF; returns (text payloads, close code).
async fn read_frames(mut s: TcpStream) -> (Vec<String>, Option<u16>) {
    let mut buf = Vec::new();
    tokio::time::timeout(common::WAIT, s.read_to_end(&mut buf)).await.expect("server closes").unwrap();
    let (mut texts, mut close_code) = (Vec::new(), None);
    let mut i = 0;
    while i + 2 <= buf.len() {
        let op = buf[i] & 0x0f;
        let (len, hdr) = match buf[i + 1] & 0x7f {
            126 => (u16::from_be_bytes([buf[i + 2], buf[i + 3]]) as usize, 4),
            127 => panic!("unexpectedly large frame"),
            n => (n as usize, 2),
        };
        let payload = &buf[i + hdr..i + hdr + len];
        match op {
            0x1 => texts.push(String::from_utf8(payload.to_vec()).unwrap()),
            0x8 => close_code = Some(u16::from_be_bytes([payload[0], payload[1]])),
            _ => {}
        }
        i += hdr + len;
    }
    (texts, close_code)
}

#[tokio::test]
async fn garbage_bytes_close_with_protocol_error() {
    let server = TestServer::default().await;
    let (mut bystander, _) = server.join(Encoding::Json, "arena", "bystander").await;
    let mut s = raw_ws(&server).await;
    // Not a WebSocket frame: reserved bits set, unmasked.
    s.write_all(b"\xff\xff\xff\xff\x00garbage\r\n").await.unwrap();
    let (texts, code) = read_frames(s).await;
    assert_eq!(code, Some(close::PROTOCOL_ERROR));
    assert!(texts.iter().any(|t| t.contains("\"protocol_error\"")), "{texts:?}");
    assert_still_served(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn unjoined_connection_times_out() {
    let server = TestServer::start(ServerConfig { join_timeout: Duration::from_millis(300), ..config() }).await;
    let s = raw_ws(&server).await;
    let (texts, code) = read_frames(s).await;
    assert_eq!(code, Some(close::JOIN_TIMEOUT));
    assert!(texts.iter().any(|t| t.contains("\"not_joined\"")), "{texts:?}");
    server.stop().await;
}

#[tokio::test]
async fn handshake_without_a_known_subprotocol_is_refused_over_http() {
    let server = TestServer::default().await;
    for offer in ["", "Sec-WebSocket-Protocol: arena.v9.xml\r\n"] {
        let mut s = TcpStream::connect(server.ws_addr).await.unwrap();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{offer}\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
        assert!(resp.contains("arena.v1.msgpack or arena.v1.json"), "{resp}");
    }
    // The SDK client reports it too.
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(server.ws_url.as_str()).unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "graphql-ws".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn ping_flood_is_limited_then_closed() {
    let server = TestServer::default().await;
    let (mut bystander, _) = server.join(Encoding::Json, "arena", "bystander").await;
    let (mut c, _) = server.join(Encoding::MsgPack, "arena", "pinger").await;
    for _ in 0..2_000 {
        if c.ws_mut().feed(Message::Ping(vec![1u8, 2, 3].into())).await.is_err() {
            break;
        }
    }
    let _ = c.ws_mut().flush().await;
    let (code, seen) = recv_close(&mut c).await;
    assert_eq!(code, close::POLICY_VIOLATION);
    assert!(error_codes(&seen).contains(&"rate_limited"), "{seen:?}");
    assert_still_served(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn deeply_nested_messagepack_is_refused_not_fatal() {
    let server = TestServer::default().await;
    let (mut bystander, _) = server.join(Encoding::Json, "arena", "bystander").await;
    let (mut c, _) = server.join(Encoding::MsgPack, "arena", "nester").await;
    // 4,000 nested one-element arrays in one frame, then a map 4,000 deep.
    let mut arrays = vec![0x91u8; 4_000];
    arrays.push(0xc0);
    c.ws_mut().send(Message::Binary(arrays.into())).await.unwrap();
    assert_eq!(next_error(&mut c).await, "malformed");
    let mut maps = Vec::new();
    for _ in 0..1_300 {
        maps.extend_from_slice(&[0x81, 0xa1, b'a']);
    }
    maps.push(0xc0);
    c.ws_mut().send(Message::Binary(maps.into())).await.unwrap();
    assert_eq!(next_error(&mut c).await, "malformed");
    c.send(&ClientMsg::Ping { nonce: 5 }).await.unwrap();
    recv_until(&mut c, |m, _| matches!(m, ServerMsg::Pong { nonce: 5 })).await;
    assert_still_served(&mut bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn one_address_cannot_hoard_unjoined_connections() {
    let server = TestServer::start(ServerConfig { max_pending_per_ip: 3, ..config() }).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(server.ws_addr).await.unwrap());
    }
    // The fourth is answered at once: 503 with retry advice, then a clean close (no reset).
    let mut extra = TcpStream::connect(server.ws_addr).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(common::WAIT, extra.read_to_end(&mut answer)).await.expect("closed at once").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("Retry-After: 1\r\n") && answer.contains("from your address"), "{answer}");
    // Joined bots do not count: once a slot frees, bots join as usual.
    drop(idle.pop());
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let mut c = match Client::connect(&server.ws_url, Encoding::Json).await {
            Ok(c) => c,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        c.join(&server.ticket("w", "after"), None).await.expect("join once a slot is free");
        break;
    }
    let (_b, _) = server.join(Encoding::Json, "w", "another").await;
    server.stop().await;
}
