//! A client that stops reading is resynchronised when it catches up, or dropped when it does not;
//! its queue never grows past the cap.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arena_gameserver::ServerConfig;
use arena_gameserver::session::SessionLimits;
use arena_sdk::Encoding;
use arena_sdk::client::Client;
use arena_sdk::codec::{decode_server, encode};
use arena_sdk::protocol::{Command, Event, ServerMsg};
use common::{TestServer, config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const MAX_QUEUED: usize = 4096;

fn slow_config() -> ServerConfig {
    ServerConfig {
        tick_hz: 50,
        max_queued_bytes: MAX_QUEUED,
        socket_send_buffer: Some(4096),
        slow_client: Duration::from_secs(2),
        flush_timeout: Duration::from_secs(1),
        limits: SessionLimits { messages_per_sec: 2000.0, message_burst: 2000.0, ..SessionLimits::default() },
        ..config()
    }
}

/// A raw JSON client with a tiny receive buffer that has joined `world` and reads nothing.
async fn stalled_client(server: &TestServer, world: &str, bot: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    let mut s = sock.connect(server.ws_addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: arena.v1.json\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.unwrap());
    }
    let join = format!(r#"{{"type":"join","ticket":"{}"}}"#, server.ticket(world, bot));
    s.write_all(&masked_text_frame(join.as_bytes())).await.unwrap();
    s
}

fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Keep a chatty bot talking (long lines make big updates) and reading, until `stop`. The
/// largest update it reads, as JSON, goes to `largest`: a stalled client's copy is the same size.
async fn chatter(mut c: Client, stop: tokio::sync::watch::Receiver<bool>, largest: Arc<AtomicUsize>) -> Client {
    let line = "la ".repeat(90);
    while !*stop.borrow() {
        for _ in 0..5 {
            c.input(Command::Say(line.clone())).await.unwrap();
        }
        while let Ok(r) = c.recv_timeout(Duration::from_millis(5)).await {
            if let Ok(bytes) = encode(Encoding::Json, &r.msg) {
                largest.fetch_max(bytes.len(), Ordering::Relaxed);
            }
        }
    }
    c
}

/// The whole server frames in `bytes`, decoded.
fn server_frames(bytes: &[u8]) -> Vec<ServerMsg> {
    let mut rest = bytes;
    let mut out = Vec::new();
    while rest.len() >= 2 {
        let (len, head) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 if rest.len() >= 10 => (u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize, 10),
            n if n < 126 => (usize::from(n), 2),
            _ => break,
        };
        if rest.len() < head + len {
            break;
        }
        if rest[0] & 0x0f == 0x1
            && let Ok(m) = decode_server(Encoding::Json, &rest[head..head + len])
        {
            out.push(m);
        }
        rest = &rest[head + len..];
    }
    out
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sockets this process holds (both ends of a loopback connection count, one each).
fn sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn stalled_client_is_dropped_and_queue_stays_bounded() {
    let server = TestServer::start(slow_config()).await;
    let (talker, _) = server.join(Encoding::Json, "w", "talker").await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let largest = Arc::new(AtomicUsize::new(0));
    let talking = tokio::spawn(chatter(talker, stop_rx, largest.clone()));
    let before = sockets();
    let _stalled = stalled_client(&server, "w", "stalled").await;
    eventually("the stalled client connected", || sockets() == before + 2).await;
    let stalled_at = std::time::Instant::now();

    let m = server.host.metrics().clone();
    let mut max_queued = 0;
    eventually("the stalled client is dropped", || {
        max_queued = max_queued.max(m.outbound_queued_bytes.get());
        m.clients_dropped.get_or_create(&[("reason", "slow_consumer")]).get() >= 1
    })
    .await;
    // The cap, plus the close frame that is queued past it, plus at most one frame: a frame
    // partly on the wire must follow whole, and a busy tick's update can be larger than this
    // test's tiny cap (the same slack covers the talker's own queue, which is empty or one frame).
    let frame = largest.load(Ordering::Relaxed);
    assert!(max_queued <= (MAX_QUEUED + frame + 200) as i64, "queued {max_queued}, largest frame {frame}");
    // It never reads its close frame either: after the flush deadline the server closes the
    // socket hard and its descriptor is free (the client's own end is all that is left).
    eventually("the server's end of the stalled socket is closed", || sockets() == before + 1).await;
    let freed = stalled_at.elapsed();
    assert!(freed < Duration::from_secs(2 + 1 + 2), "freed after {freed:?} (slow 2 s + flush 1 s)");
    assert!(m.connections.get() <= 1, "only the talker is left");
    stop_tx.send_replace(true);
    let mut talker = talking.await.unwrap();
    // The talker was never disturbed.
    let r = talker.recv_timeout(common::WAIT).await.unwrap();
    assert!(matches!(r.msg, ServerMsg::Update(_)));
    server.stop().await;
}

#[tokio::test]
async fn client_that_catches_up_gets_a_snapshot() {
    let server = TestServer::start(slow_config()).await;
    let (talker, _) = server.join(Encoding::Json, "w", "talker").await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let talking = tokio::spawn(chatter(talker, stop_rx, Arc::default()));
    let mut lagging = stalled_client(&server, "w", "lagging").await;

    let m = server.host.metrics().clone();
    let skipped = || m.updates_due.get() - m.updates_delivered.get();
    eventually("updates are skipped for the lagging client", || skipped() > 0).await;
    // Now read everything: the queue drains and the next tick sends a snapshot.
    let mut seen = Vec::new();
    let snapshot = tokio::time::timeout(common::WAIT, async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = lagging.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed");
            seen.extend_from_slice(&chunk[..n]);
            if let Some(snap) = server_frames(&seen).into_iter().find_map(|m| match m {
                ServerMsg::Snapshot(s) => Some(s),
                _ => None,
            }) {
                return snap;
            }
        }
    })
    .await
    .expect("a snapshot after catching up");
    // The chat of the ticks it missed comes with it: no line is lost to the resync.
    let said =
        snapshot.events.iter().filter(|e| matches!(e, Event::Say { text, .. } if text.starts_with("la "))).count();
    assert!(said > 0, "the snapshot carries the chat it replaced: {:?}", snapshot.events.len());
    assert!(m.clients_resynced.get() >= 1);
    assert_eq!(m.clients_dropped.get_or_create(&[("reason", "slow_consumer")]).get(), 0);
    stop_tx.send_replace(true);
    talking.await.unwrap();
    server.stop().await;
}
