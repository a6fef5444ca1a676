//! Joining over real sockets: valid tickets seat bots; bad tickets get the documented errors.

mod common;

use arena_gameserver::ServerConfig;
use arena_gameserver::world::WorldConfig;
use arena_sdk::Encoding;
use arena_sdk::client::{Client, ClientError};
use arena_sdk::protocol::{Command, ErrorCode, Event, Move, ServerMsg, close};
use arena_sdk::ticket::{TicketClaims, TicketKey, sign};
use common::{TestServer, WAIT, config, recv_until, ticket_with};

async fn refused(server: &TestServer, ticket: &str, world: Option<&str>) -> (ErrorCode, u16) {
    let mut c = Client::connect(&server.ws_url, Encoding::Json).await.unwrap();
    let code = match c.join(ticket, world).await {
        Err(ClientError::Refused(e)) => e.code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let (close_code, _) = common::recv_close(&mut c).await;
    (code, close_code)
}

#[tokio::test]
async fn valid_ticket_joins_in_both_encodings_and_bots_see_each_other() {
    let server = TestServer::default().await;
    let (mut a, wa) = server.join(Encoding::MsgPack, "w1", "alice").await;
    assert_eq!(wa.world, "w1");
    assert_eq!(wa.tick_hz, 20);
    assert_eq!(wa.snapshot.bots.len(), 1);
    assert_eq!(wa.snapshot.bots[0].name, "alice");
    assert!(wa.resume_token.starts_with("w1."));

    let (mut b, wb) = server.join(Encoding::Json, "w1", "bob").await;
    assert_eq!(wb.snapshot.bots.len(), 2, "bob sees alice in his welcome");

    // Alice hears bob join, and her mirror follows.
    let bob = wb.bot;
    recv_until(
        &mut a,
        |m, _| matches!(m, ServerMsg::Update(u) if u.events.contains(&Event::Joined { bot: bob, name: "bob".into() })),
    )
    .await;
    assert_eq!(a.mirror().unwrap().bot(bob).unwrap().name, "bob");

    // Bob moves; alice's mirror sees him walk, bob's own update acknowledges the input.
    let seq = b.input(Command::Move(Move::To([500.0, 500.0]))).await.unwrap();
    recv_until(&mut b, |m, _| matches!(m, ServerMsg::Update(u) if u.ack_seq == seq)).await;
    recv_until(&mut a, |_, c| c.mirror().unwrap().bot(bob).is_some_and(|s| (s.tx, s.ty) == (500.0, 500.0))).await;
    b.input(Command::Say("hello alice".into())).await.unwrap();
    recv_until(&mut a, |m, _| {
        matches!(m, ServerMsg::Update(u) if u.events.iter().any(|e| matches!(e, Event::Say { text, .. } if text == "hello alice")))
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn bad_tickets_are_refused_with_their_codes() {
    let server = TestServer::default().await;
    let dev = TicketKey::development();

    let forged_key = TicketKey::new("dev", &[42u8; 32]).unwrap();
    assert_eq!(
        refused(&server, &ticket_with(&forged_key, "w", "b", None, 60), None).await,
        (ErrorCode::TicketInvalid, close::JOIN_REFUSED)
    );
    assert_eq!(refused(&server, "v1.dev.garbage.garbage", None).await.0, ErrorCode::TicketInvalid);

    let expired = sign(
        &dev,
        &TicketClaims { world: "w".into(), bot: "b".into(), server: None, fence: None, exp: 1_000, nonce: "n1".into() },
    );
    assert_eq!(refused(&server, &expired, None).await, (ErrorCode::TicketExpired, close::JOIN_REFUSED));

    let t = server.ticket("w-right", "b");
    assert_eq!(refused(&server, &t, Some("w-wrong")).await.0, ErrorCode::TicketWrongWorld);

    let other_server = ticket_with(&dev, "w", "b", Some("gs-other"), 60);
    assert_eq!(refused(&server, &other_server, None).await.0, ErrorCode::TicketWrongServer);
    let this_server = ticket_with(&dev, "w", "b2", Some("gs-test"), 60);
    let mut ok = Client::connect(&server.ws_url, Encoding::Json).await.unwrap();
    ok.join(&this_server, None).await.expect("a ticket bound to this server joins");

    let once = server.ticket("w", "reuser");
    let mut first = Client::connect(&server.ws_url, Encoding::Json).await.unwrap();
    first.join(&once, None).await.unwrap();
    assert_eq!(refused(&server, &once, None).await, (ErrorCode::TicketReused, close::JOIN_REFUSED));
    server.stop().await;
}

#[tokio::test]
async fn full_world_refuses_and_capacity_holds() {
    let cfg = ServerConfig { world: WorldConfig { capacity: 2, ..WorldConfig::default() }, ..config() };
    let server = TestServer::start(cfg).await;
    let (_a, _) = server.join(Encoding::Json, "tiny", "a").await;
    let (_b, wb) = server.join(Encoding::Json, "tiny", "b").await;
    assert_eq!(wb.snapshot.bots.len(), 2);
    let t = server.ticket("tiny", "c");
    assert_eq!(refused(&server, &t, None).await, (ErrorCode::WorldFull, close::JOIN_REFUSED));
    server.stop().await;
}

#[tokio::test]
async fn server_full_of_worlds_refuses_new_worlds() {
    let server = TestServer::start(ServerConfig { max_worlds: 1, ..config() }).await;
    let (_a, _) = server.join(Encoding::Json, "only", "a").await;
    let t = server.ticket("another", "b");
    assert_eq!(refused(&server, &t, None).await.0, ErrorCode::ServerFull);
    server.stop().await;
}

#[tokio::test]
async fn same_bot_joining_again_takes_over_its_seat() {
    let server = TestServer::default().await;
    let (mut old, w1) = server.join(Encoding::Json, "w", "twin").await;
    let (_new, w2) = server.join(Encoding::MsgPack, "w", "twin").await;
    assert_eq!(w1.bot, w2.bot, "one bot, one seat");
    assert_eq!(w2.snapshot.bots.len(), 1);
    let (code, _) = tokio::time::timeout(WAIT, common::recv_close(&mut old)).await.unwrap();
    assert_eq!(code, close::REPLACED);
    server.stop().await;
}
