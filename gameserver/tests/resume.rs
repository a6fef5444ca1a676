//! Seats survive a dropped connection for the grace period, and not longer.

mod common;

use std::time::Duration;

use arena_gameserver::ServerConfig;
use arena_sdk::Encoding;
use arena_sdk::client::{Client, ClientError};
use arena_sdk::protocol::{Command, ErrorCode, Event, Move, ServerMsg, close};
use common::{TestServer, config, recv_until};

fn left(bot: u32) -> impl FnMut(&ServerMsg, &Client) -> bool {
    move |m, _| matches!(m, ServerMsg::Update(u) if u.events.contains(&Event::Left { bot }))
}

#[tokio::test]
async fn dropped_bot_resumes_within_grace_and_is_freed_after_it() {
    let server = TestServer::start(ServerConfig { resume_grace: Duration::from_millis(600), ..config() }).await;
    let (mut watcher, _) = server.join(Encoding::Json, "w", "watcher").await;
    let (mut a, wa) = server.join(Encoding::MsgPack, "w", "a").await;
    let seq = a.input(Command::Move(Move::To([10.0, 10.0]))).await.unwrap();
    recv_until(&mut a, |m, _| matches!(m, ServerMsg::Update(u) if u.ack_seq == seq)).await;
    drop(a); // no close frame: a dropped connection

    let mut back = Client::connect(&server.ws_url, Encoding::MsgPack).await.unwrap();
    let wb = back.resume(&wa.resume_token).await.expect("resume within grace");
    assert_eq!(wb.bot, wa.bot, "same seat");
    assert_eq!(wb.ack_seq, seq, "the seat remembers its last applied input");
    assert_ne!(wb.resume_token, wa.resume_token, "tokens rotate");
    let me = wb.snapshot.bots.iter().find(|b| b.id == wb.bot).unwrap();
    assert_eq!((me.tx, me.ty), (10.0, 10.0), "the world kept the bot's state");
    // Inputs continue after the acknowledged seq.
    let next = back.input(Command::Say("back".into())).await.unwrap();
    assert_eq!(next, seq + 1);
    recv_until(&mut back, |m, _| matches!(m, ServerMsg::Update(u) if u.ack_seq == next)).await;

    drop(back);
    recv_until(&mut watcher, left(wa.bot)).await;
    assert!(watcher.mirror().unwrap().bot(wa.bot).is_none());

    let mut late = Client::connect(&server.ws_url, Encoding::Json).await.unwrap();
    match late.resume(&wb.resume_token).await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::ResumeInvalid),
        other => panic!("expected resume_invalid, got {other:?}"),
    }
    assert_eq!(common::recv_close(&mut late).await.0, close::JOIN_REFUSED);
    server.stop().await;
}

#[tokio::test]
async fn leaving_frees_the_seat_at_once() {
    // Default grace (10 s) is longer than the wait below: only a real leave passes.
    let server = TestServer::default().await;
    let (mut watcher, _) = server.join(Encoding::Json, "w", "watcher").await;
    let (c, wc) = server.join(Encoding::Json, "w", "c").await;
    c.leave().await.unwrap();
    recv_until(&mut watcher, left(wc.bot)).await;
    server.stop().await;
}

#[tokio::test]
async fn resume_takes_over_a_half_open_connection() {
    let server = TestServer::default().await;
    let (mut old, w) = server.join(Encoding::Json, "w", "a").await;
    let mut new = Client::connect(&server.ws_url, Encoding::Json).await.unwrap();
    let w2 = new.resume(&w.resume_token).await.unwrap();
    assert_eq!(w2.bot, w.bot);
    assert_eq!(common::recv_close(&mut old).await.0, close::REPLACED);
    server.stop().await;
}

#[tokio::test]
async fn unknown_tokens_are_refused() {
    let server = TestServer::default().await;
    for token in ["", "nope", "w.AAAA", &"x".repeat(2000)] {
        let mut c = Client::connect(&server.ws_url, Encoding::Json).await.unwrap();
        match c.resume(token).await {
            Err(ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::ResumeInvalid, "{token}"),
            other => panic!("{other:?}"),
        }
    }
    server.stop().await;
}
