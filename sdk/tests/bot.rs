//! The self-reconnecting bot against real processes: an allocator and gameservers on loopback
//! (the workspace's binaries; `scripts/test` builds them).

use std::time::Duration;

use arena_sdk::bot::{Backoff, Bot, BotEvent, BotOptions, Seat};
use arena_sdk::protocol::Event;
use arena_testkit::certs::TestCert;
use arena_testkit::process::{AllocatorOpts, GameserverOpts, GameserverProc, allocator, gameserver, wait_servers};
use arena_testkit::proxy::Proxy;

const WAIT: Duration = Duration::from_secs(20);

async fn server(base: &str, id: &str, public: Option<&str>) -> GameserverProc {
    gameserver(GameserverOpts { public_ws_url: public.map(str::to_owned), ..GameserverOpts::new(id, base) }).await
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

/// Wait until the bot's world shows someone saying `text`.
async fn hear(bot: &mut Bot, text: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(BotEvent::Update(u)) = tokio::time::timeout_at(deadline, bot.next_event()).await.expect(text)
            && u.events.iter().any(|e| matches!(e, Event::Say { text: said, .. } if said == text))
        {
            return;
        }
    }
}

fn options(name: &str) -> BotOptions {
    BotOptions {
        backoff: Backoff { initial: Duration::from_millis(50), max: Duration::from_millis(500), jitter: true },
        ..BotOptions::new(name, "arena-dev-key")
    }
}

#[tokio::test]
async fn bot_plays_resumes_after_a_drop_and_shuts_down() {
    let alloc = allocator(AllocatorOpts::default()).await;
    let base = alloc.url.clone();
    let proxy = Proxy::unbound().await;
    let gs = server(&base, "gs-1", Some(&format!("ws://{}/ws", proxy.addr))).await;
    proxy.set_upstream(gs.ws);
    wait_servers(&base, 1).await;

    let mut bot = Bot::connect(&base, options("resilient")).await.expect("connect");
    let first = next_joined(&mut bot).await;
    assert!(!first.resumed);
    bot.say("before the drop").await.unwrap();
    hear(&mut bot, "before the drop").await;

    proxy.cut().await;
    let again = next_joined(&mut bot).await;
    assert!(again.resumed, "the seat is resumed, not reallocated");
    assert_eq!((again.bot, &again.world_id), (first.bot, &first.world_id));
    assert!(bot.with_world(|w| w.bot(first.bot).is_some()).unwrap(), "the mirror holds the bot after the resume");
    bot.move_to(10.0, 10.0).await.expect("inputs flow again");
    bot.shutdown().await;
}

#[tokio::test]
async fn bot_plays_over_wss_verifying_the_server_certificate() {
    let made = TestCert::new(&["localhost", "127.0.0.1"]);
    let (cert, key) = made.files();
    let alloc = allocator(AllocatorOpts::default()).await;
    let base = alloc.url.clone();
    let tls =
        vec!["--ws-tls-cert".into(), cert.display().to_string(), "--ws-tls-key".into(), key.display().to_string()];
    let _gs = gameserver(GameserverOpts { extra: tls, ..GameserverOpts::new("gs-tls", &base) }).await;
    wait_servers(&base, 1).await;

    let opts = BotOptions { tls_roots: Some(made.roots()), ..options("secure") };
    let mut bot = Bot::connect(&base, opts).await.expect("connect");
    next_joined(&mut bot).await;
    bot.say("over wss").await.unwrap();
    hear(&mut bot, "over wss").await;
    bot.shutdown().await;

    // The system's roots do not know this certificate: the bot refuses to connect.
    match Bot::connect(&base, BotOptions { max_attempts: Some(2), ..options("strict") }).await {
        Ok(_) => panic!("joined a server whose certificate nothing vouches for"),
        Err(e) => assert!(format!("{e:?}").contains("InvalidCertificate"), "{e:?}"),
    }
}

#[tokio::test]
async fn bot_with_its_own_world_follows_it_to_another_server() {
    let alloc = allocator(AllocatorOpts::default()).await;
    let base = alloc.url.clone();
    let mut a = server(&base, "gs-a", None).await;
    let mut b = server(&base, "gs-b", None).await;
    wait_servers(&base, 2).await;

    let opts = BotOptions { world_id: Some("home".into()), ..options("homebody") };
    let mut bot = Bot::connect(&base, opts).await.expect("connect");
    let first = next_joined(&mut bot).await;
    assert_eq!(first.world_id, "home");
    // Kill the server holding the world, whichever the allocator picked.
    let owner = if first.server_id == "gs-a" { &mut a } else { &mut b };
    owner.proc.kill();
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

/// With the `quic` feature (on in the workspace's test build: the gameserver's tests ask for it).
#[cfg(feature = "quic")]
mod over_quic {
    use super::*;
    use arena_sdk::bot::Transport;

    #[tokio::test]
    async fn bot_plays_over_quic_where_served_and_over_websocket_elsewhere() {
        let alloc = allocator(AllocatorOpts::default()).await;
        let base = alloc.url.clone();
        let quic = vec!["--quic-addr".into(), "127.0.0.1:0".into()];
        let with_quic = gameserver(GameserverOpts { extra: quic, ..GameserverOpts::new("gs-quic", &base) }).await;
        wait_servers(&base, 1).await;

        let opts = BotOptions { transport: Transport::Quic, ..options("quick") };
        let mut bot = Bot::connect(&base, opts).await.expect("connect");
        let seat = next_joined(&mut bot).await;
        assert_eq!((seat.transport, seat.server_id.as_str()), (Transport::Quic, "gs-quic"));
        bot.say("over quic").await.unwrap();
        hear(&mut bot, "over quic").await;
        assert!(bot.with_world(|w| w.bot(seat.bot).is_some()).unwrap(), "the mirror holds the bot");

        // Its server drains: the bot is placed on the one left, which serves WebSocket only.
        let _plain = server(&base, "gs-plain", None).await;
        wait_servers(&base, 2).await;
        with_quic.proc.signal("-TERM");
        let moved = next_joined(&mut bot).await;
        assert_eq!((moved.transport, moved.server_id.as_str()), (Transport::WebSocket, "gs-plain"));
        bot.move_to(5.0, 5.0).await.expect("inputs flow on the new seat");
        bot.shutdown().await;
    }
}
