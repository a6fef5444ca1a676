//! `wss://`: a WebSocket listener with a configured certificate serves TLS 1.3 only. A client
//! that verifies the certificate joins and plays in both encodings; one that does not trust it,
//! or asks for another name, is stopped by its own verification; a plain `ws://` client is
//! refused with a readable 400; garbage after a TLS start costs the server nothing; a forged
//! record after the join drops the connection and keeps the seat; a client that stops reading is
//! dropped with its queue capped; a drain's close frame arrives through TLS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use arena_gameserver::ServerConfig;
use arena_sdk::Encoding;
use arena_sdk::client::{Client, ClientError};
use arena_sdk::protocol::{Command, Move, ServerMsg, close};
use arena_testkit::certs::TestCert;
use common::{TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A server on `wss://` with a certificate for `localhost`.
async fn tls_server(cert: &TestCert) -> TestServer {
    TestServer::start(ServerConfig { ws_tls: Some(cert.files()), ..common::config() }).await
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn wss_url(s: &TestServer) -> String {
    format!("wss://localhost:{}/ws", s.ws_addr.port())
}

async fn connect(s: &TestServer, pki: &TestCert, enc: Encoding) -> Client {
    Client::connect_with_roots(&wss_url(s), enc, pki.roots()).await.expect("a verified wss:// connection")
}

#[tokio::test]
async fn a_verifying_client_joins_and_its_inputs_are_acknowledged_in_both_encodings() {
    let pki = TestCert::new(&["localhost"]);
    let s = tls_server(&pki).await;
    for (enc, bot) in [(Encoding::MsgPack, "tls-msgpack"), (Encoding::Json, "tls-json")] {
        let mut c = connect(&s, &pki, enc).await;
        let w = c.join(&s.ticket("tw", bot), Some("tw")).await.expect("join");
        assert_eq!(w.world, "tw");
        for _ in 0..20 {
            c.input(Command::Move(Move::By([1.0, 0.0]))).await.unwrap();
        }
        let last = c.input(Command::Say("over TLS".into())).await.unwrap();
        common::recv_until(&mut c, |m, _| matches!(m, ServerMsg::Update(u) if u.ack_seq >= last)).await;
        assert!(c.mirror().unwrap().bots().any(|b| b.id == w.bot), "the mirror follows the world: {bot}");
        c.leave().await.unwrap();
    }
    s.stop().await;
}

/// The client's own verification stopped the handshake (rustls reports it through the socket).
fn refused_certificate(r: &Result<Client, ClientError>) -> bool {
    matches!(r, Err(ClientError::WebSocket(tungstenite::Error::Io(e)))
        if e.kind() == std::io::ErrorKind::InvalidData && format!("{e:?}").contains("InvalidCertificate"))
}

#[tokio::test]
async fn a_client_verifies_the_certificate_it_is_shown() {
    let pki = TestCert::new(&["localhost"]);
    let s = tls_server(&pki).await;
    // A store without the server's certificate: the client's verification fails the handshake.
    let stranger = TestCert::new(&["localhost"]);
    let untrusted = Client::connect_with_roots(&wss_url(&s), Encoding::MsgPack, stranger.roots()).await;
    assert!(refused_certificate(&untrusted), "{untrusted:?}");
    // The certificate names localhost, not 127.0.0.1.
    let by_ip = format!("wss://127.0.0.1:{}/ws", s.ws_addr.port());
    let wrong_name = Client::connect_with_roots(&by_ip, Encoding::MsgPack, pki.roots()).await;
    assert!(refused_certificate(&wrong_name), "{wrong_name:?}");
    // The server is none the worse for either.
    let mut c = connect(&s, &pki, Encoding::MsgPack).await;
    c.join(&s.ticket("tv", "after"), Some("tv")).await.expect("join");
    s.stop().await;
}

#[tokio::test]
async fn a_plain_ws_client_is_refused_with_a_readable_400() {
    let pki = TestCert::new(&["localhost"]);
    let s = tls_server(&pki).await;
    let plain = Client::connect(&s.ws_url, Encoding::MsgPack).await;
    let Err(ClientError::WebSocket(tungstenite::Error::Http(response))) = plain else {
        panic!("expected an HTTP refusal, got {plain:?}");
    };
    assert_eq!(response.status(), 400);
    let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
    assert!(body.contains("wss://"), "{body}");

    // Whatever the plain client sends, the whole answer arrives and the connection ends cleanly.
    let mut raw = TcpStream::connect(s.ws_addr).await.unwrap();
    raw.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, raw.read_to_end(&mut answer)).await.expect("closed").unwrap();
    let text = String::from_utf8(answer).unwrap();
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n") && text.contains("wss://"), "{text}");
    drop(raw);
    let not_tls = || s.host.metrics().handshakes_failed.get_or_create(&[("reason", "not_tls")]).get();
    eventually("both plain clients are counted", || not_tls() == 2).await;
    s.stop().await;
}

#[tokio::test]
async fn garbage_after_a_tls_start_is_closed_and_costs_nothing() {
    let pki = TestCert::new(&["localhost"]);
    let s = tls_server(&pki).await;
    for garbage in [&b"\x16\x03\x01\x00\x05hello"[..], &[0x16; 4096][..], b"\x16"] {
        let mut raw = TcpStream::connect(s.ws_addr).await.unwrap();
        raw.write_all(garbage).await.unwrap();
        let _ = raw.shutdown().await;
        let mut sink = Vec::new();
        // An alert then FIN, or a reset: either way the server ends the connection.
        tokio::time::timeout(WAIT, raw.read_to_end(&mut sink)).await.expect("the server closes").ok();
    }
    let mut c = connect(&s, &pki, Encoding::Json).await;
    c.join(&s.ticket("tg", "after-garbage"), Some("tg")).await.expect("join");
    let failed = |reason| s.host.metrics().handshakes_failed.get_or_create(&[("reason", reason)]).get();
    eventually("each garbage connection is counted", || failed("tls") + failed("eof") + failed("io") == 3).await;
    eventually("the garbage connections are freed", || s.host.metrics().connections.get() == 1).await;
    s.stop().await;
}

#[tokio::test]
async fn a_forged_record_after_the_join_drops_the_connection_and_the_seat_waits_for_a_resume() {
    let pki = TestCert::new(&["localhost"]);
    let s = tls_server(&pki).await;
    let mut c = connect(&s, &pki, Encoding::MsgPack).await;
    let w = c.join(&s.ticket("tf", "forged"), Some("tf")).await.expect("join");
    // Bytes that look like an application-data record but were not sealed by the client's keys.
    let tokio_tungstenite::MaybeTlsStream::Rustls(tls) = c.ws_mut().get_mut() else { panic!("not TLS") };
    let forged = [&[0x17u8, 0x03, 0x03, 0x00, 0x20][..], &[0xab; 32]].concat();
    tls.get_mut().0.write_all(&forged).await.unwrap();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = c.recv().await {
                return e;
            }
        }
    })
    .await
    .expect("the server ends the connection");
    assert!(!matches!(ended, ClientError::Refused(_)), "{ended:?}");
    // Not the client's fault as far as the seat knows: it is kept for the grace period.
    let mut back = connect(&s, &pki, Encoding::MsgPack).await;
    let again = back.resume(&w.resume_token).await.expect("resume");
    assert_eq!(again.bot, w.bot);
    s.stop().await;
}

#[tokio::test]
async fn a_tls_client_that_stops_reading_is_dropped_and_its_queue_stays_capped() {
    use futures_util::SinkExt;

    const MAX_QUEUED: usize = 4096;
    let pki = TestCert::new(&["localhost"]);
    let cfg = ServerConfig {
        ws_tls: Some(pki.files()),
        tick_hz: 50,
        max_queued_bytes: MAX_QUEUED,
        socket_send_buffer: Some(4096),
        slow_client: Duration::from_secs(2),
        flush_timeout: Duration::from_secs(1),
        limits: arena_gameserver::session::SessionLimits {
            messages_per_sec: 2000.0,
            message_burst: 2000.0,
            ..Default::default()
        },
        ..common::config()
    };
    let s = TestServer::start(cfg).await;
    let mut talker = connect(&s, &pki, Encoding::Json).await;
    talker.join(&s.ticket("ts", "talker"), Some("ts")).await.unwrap();

    // A verified TLS client with a tiny receive buffer that joins, then reads nothing.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    let tcp = sock.connect(s.ws_addr).await.unwrap();
    let mut request = wss_url(&s).into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "arena.v1.json".parse().unwrap());
    let connector = tokio_tungstenite::Connector::Rustls(client_tls(&pki, &[]));
    let (mut stalled, _) =
        tokio_tungstenite::client_async_tls_with_config(request, tcp, None, Some(connector)).await.unwrap();
    let join = format!(r#"{{"type":"join","ticket":"{}"}}"#, s.ticket("ts", "stalled"));
    stalled.send(tungstenite::Message::text(join)).await.unwrap();

    let m = s.host.metrics().clone();
    let line = "la ".repeat(90);
    let mut max_queued = 0;
    let mut largest = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while m.clients_dropped.get_or_create(&[("reason", "slow_consumer")]).get() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the stalled TLS client was not dropped");
        for _ in 0..5 {
            talker.input(Command::Say(line.clone())).await.unwrap();
        }
        while let Ok(r) = talker.recv_timeout(Duration::from_millis(5)).await {
            largest = largest.max(arena_sdk::codec::encode(Encoding::Json, &r.msg).map_or(0, |b| b.len()));
        }
        max_queued = max_queued.max(m.outbound_queued_bytes.get());
    }
    // A TLS queue may hold one frame past the cap (records cannot be taken back), and the
    // largest frame a lagging client is sent is its resync snapshot: the world and at most
    // MAX_HISTORY_EVENTS events, here each a say of `line`. Plus the close frame and close_notify.
    let say = arena_sdk::protocol::Event::Say { bot: 1, text: line.clone() };
    let event = serde_json::to_vec(&say).unwrap().len() + 1;
    let frame = largest.max(4096) + arena_gameserver::room::MAX_HISTORY_EVENTS * event;
    assert!(max_queued <= (MAX_QUEUED + frame + 1024) as i64, "queued {max_queued}, largest frame {frame}");
    eventually("the stalled connection is freed", || m.connections.get() <= 1).await;
    // The talker was never disturbed.
    let last = talker.input(Command::Say("still here".into())).await.unwrap();
    common::recv_until(&mut talker, |m, _| matches!(m, ServerMsg::Update(u) if u.ack_seq >= last)).await;
    drop(stalled);
    s.stop().await;
}

/// A client's TLS configuration trusting `cert`, offering `alpn`.
fn client_tls(cert: &TestCert, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(cert.roots())
        .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(tls)
}

#[tokio::test]
async fn alpn_if_sent_must_include_http_1_1() {
    let pki = TestCert::new(&["localhost"]);
    let s = tls_server(&pki).await;
    for (alpn, ok) in [(&[&b"h2"[..]][..], false), (&[b"h2", b"http/1.1"], true)] {
        let mut request = wss_url(&s).into_client_request().unwrap();
        request.headers_mut().insert("Sec-WebSocket-Protocol", "arena.v1.json".parse().unwrap());
        let connector = tokio_tungstenite::Connector::Rustls(client_tls(&pki, alpn));
        let tcp = TcpStream::connect(s.ws_addr).await.unwrap();
        let r = tokio_tungstenite::client_async_tls_with_config(request, tcp, None, Some(connector)).await;
        assert_eq!(r.is_ok(), ok, "ALPN {alpn:?}: {:?}", r.err());
    }
    s.stop().await;
}

#[tokio::test]
async fn the_tls_handshake_and_the_request_share_the_handshake_deadline() {
    let pki = TestCert::new(&["localhost"]);
    let limit = Duration::from_millis(300);
    let s = TestServer::start(ServerConfig { ws_tls: Some(pki.files()), handshake_timeout: limit, ..common::config() })
        .await;
    // One stops inside the TLS handshake, one after it, before its HTTP request.
    let mut half = TcpStream::connect(s.ws_addr).await.unwrap();
    half.write_all(b"\x16\x03\x01").await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_tls(&pki, &[]));
    let tcp = TcpStream::connect(s.ws_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut silent = connector.connect(name, tcp).await.expect("the TLS handshake");
    let started = tokio::time::Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(WAIT, half.read_to_end(&mut sink)).await.expect("closed mid-handshake").ok();
    tokio::time::timeout(WAIT, silent.read_to_end(&mut sink)).await.expect("closed before the request").ok();
    assert!(started.elapsed() < limit + Duration::from_secs(2), "closed after {:?}", started.elapsed());
    let failed = |reason| s.host.metrics().handshakes_failed.get_or_create(&[("reason", reason)]).get();
    eventually("both are counted as timed out", || failed("timeout") == 2).await;
    s.stop().await;
}

#[tokio::test]
async fn a_drain_closes_tls_clients_with_going_away() {
    let pki = TestCert::new(&["localhost"]);
    let mut s = tls_server(&pki).await;
    let mut c = connect(&s, &pki, Encoding::MsgPack).await;
    c.join(&s.ticket("td", "drained"), Some("td")).await.expect("join");
    s.begin_shutdown();
    let (code, _) = tokio::time::timeout(Duration::from_secs(10), common::recv_close(&mut c)).await.expect("closed");
    assert_eq!(code, close::GOING_AWAY);
    // Then close_notify: the TLS stream ends cleanly (without it rustls reports an unexpected EOF).
    let mut rest = [0u8; 64];
    let end = tokio::time::timeout(WAIT, c.ws_mut().get_mut().read(&mut rest)).await.expect("the stream ends");
    assert_eq!(end.expect("a clean TLS end, not a truncation"), 0);
    s.stop().await;
}
