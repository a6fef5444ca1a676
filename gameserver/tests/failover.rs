//! What a dead, paused or cut-off part costs, with real processes: an allocator and gameservers
//! sharing Redis (registry and hot snapshots) and PostgreSQL, and self-reconnecting SDK bots.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use arena_sdk::Encoding;
use arena_sdk::bot::{Backoff, Bot, BotEvent, BotOptions, Seat};
use arena_sdk::client::Client;
use arena_sdk::protocol::{Command as Input, ServerMsg};
use arena_testkit::process::{
    AllocatorOpts, AllocatorProc, GameserverOpts, GameserverProc, allocator as start_allocator,
    gameserver as start_gameserver, wait_servers, workspace_bin,
};
use arena_testkit::stores::{TestDb, ThrowawayPg, clear_redis, redis_prefix, shared_redis};
use sqlx::Row;

const WAIT: Duration = Duration::from_secs(30);

async fn allocator(prefix: &str) -> (AllocatorProc, String) {
    let a = start_allocator(AllocatorOpts {
        redis: Some((shared_redis(), prefix.to_owned())),
        server_timeout_secs: 3.0,
        ..AllocatorOpts::default()
    })
    .await;
    let base = a.url.clone();
    (a, base)
}

async fn gameserver(id: &str, allocator: &str, db: &str, prefix: &str, extra: &[&str]) -> GameserverProc {
    let mut args: Vec<String> =
        ["--database-url", db, "--redis-url", &shared_redis(), "--redis-prefix", prefix].map(String::from).into();
    args.extend(extra.iter().map(|s| s.to_string()));
    start_gameserver(GameserverOpts { extra: args, ..GameserverOpts::new(id, allocator) }).await
}

async fn wait_alive(allocator: &str, n: usize) {
    wait_servers(allocator, n).await;
}

fn options(name: &str, world: &str) -> BotOptions {
    BotOptions {
        world_id: Some(world.into()),
        backoff: Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(500), jitter: true },
        max_attempts: Some(200),
        timeout: Duration::from_secs(2),
        silence_timeout: Duration::from_secs(2),
        ..BotOptions::new(name, "arena-dev-key")
    }
}

async fn joined_elsewhere(bot: &mut Bot, not: &str) -> Seat {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, bot.next_event()).await.expect("rejoined in time") {
            Some(BotEvent::Joined(seat)) if seat.server_id != not => return seat,
            Some(BotEvent::Stopped { reason }) => panic!("bot stopped: {reason}"),
            Some(_) => {}
            None => panic!("bot ended"),
        }
    }
}

/// Wait until the bot's mirror shows `pred` for its own bot.
async fn until_me(bot: &mut Bot, pred: impl Fn(&arena_sdk::protocol::BotState) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if bot.with_world(|w| w.bot(w.me()).is_some_and(&pred)).unwrap_or(false) {
            return;
        }
        assert!(tokio::time::timeout_at(deadline, bot.next_event()).await.is_ok(), "timed out");
    }
}

#[tokio::test]
async fn sigkill_costs_at_most_a_flush_of_events_and_a_second_of_state() {
    let db = TestDb::create().await;
    let prefix = redis_prefix("kill-");
    let (_alloc, base) = allocator(&prefix).await;
    let a = gameserver("gs-a", &base, &db.url, &prefix, &[]).await;
    let b = gameserver("gs-b", &base, &db.url, &prefix, &[]).await;
    wait_alive(&base, 2).await;

    let mut bots = Vec::new();
    for i in 0..3 {
        let mut bot = Bot::connect(&base, options(&format!("k{i}"), "fw")).await.expect("connect");
        let Some(BotEvent::Joined(seat)) = bot.next_event().await else { panic!("no join") };
        bots.push((bot, seat));
    }
    let owner = bots[0].1.server_id.clone();
    assert!(bots.iter().all(|(_, s)| s.server_id == owner), "one world, one server");
    let owner_proc = if owner == "gs-a" { &a.proc } else { &b.proc };

    // Each bot chats and changes its status every 100 ms; we note when each was acknowledged.
    let mut acked_lines: Vec<(String, Instant)> = Vec::new();
    let mut statuses: HashMap<String, Vec<(String, Instant)>> = HashMap::new();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(3) {
        for (i, (bot, _)) in bots.iter_mut().enumerate() {
            let line = format!("k{i}-line-{n}");
            let status = format!("s_{i}_{n}");
            bot.say(&line).await.unwrap();
            bot.act(&status, None).await.unwrap();
            until_me(bot, |me| me.status == status).await;
            let at = Instant::now();
            acked_lines.push((line, at));
            statuses.entry(format!("k{i}")).or_default().push((status, at));
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let killed_at = Instant::now();
    owner_proc.signal("-KILL");
    // The bots' seats come back on the other server, restored from the last hot snapshot.
    for (bot, _) in &mut bots {
        let seat = joined_elsewhere(bot, &owner).await;
        assert_eq!(seat.world_id, "fw");
        assert!(!seat.resumed);
    }
    for (i, (bot, _)) in bots.iter().enumerate() {
        let status = bot.with_world(|w| w.bot(w.me()).map(|b| b.status.clone())).flatten().expect("my bot is back");
        let history = &statuses[&format!("k{i}")];
        let (_, when) = history.iter().find(|(s, _)| *s == status).expect("a status it had");
        let lost = killed_at.duration_since(*when);
        assert!(lost <= Duration::from_millis(1300), "bot k{i} came back {lost:?} behind (status {status})");
        let others = bot.with_world(|w| w.bots().count()).unwrap();
        assert_eq!(others, 3, "the world came back with its bots");
    }

    // Events: everything acknowledged more than a flush interval (1 s) before the kill is there.
    let pool = db.pool().await;
    let stored: Vec<String> = sqlx::query("SELECT data->>'text' FROM activity WHERE kind = 'say' AND world_id = 'fw'")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let due: Vec<&String> = acked_lines
        .iter()
        .filter(|(_, at)| killed_at.duration_since(*at) > Duration::from_millis(1300))
        .map(|(l, _)| l)
        .collect();
    assert!(!due.is_empty());
    for l in &due {
        assert!(stored.contains(l), "{l} was acknowledged well before the kill but is not in PostgreSQL");
    }
    let lost = acked_lines.len() - stored.iter().filter(|s| acked_lines.iter().any(|(l, _)| l == *s)).count();
    eprintln!("SIGKILL: {} lines acknowledged, {lost} lost (the last flush interval)", acked_lines.len());
    for (bot, _) in bots {
        bot.shutdown().await;
    }
    clear_redis(&shared_redis(), &prefix).await;
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_paused_old_owner_cannot_overwrite_the_new_one() {
    let db = TestDb::create().await;
    let prefix = redis_prefix("pause-");
    let (_alloc, base) = allocator(&prefix).await;
    let fast = ["--snapshot-every-secs", "1"];
    let gs_a = gameserver("gs-a", &base, &db.url, &prefix, &fast).await;
    let gs_b = gameserver("gs-b", &base, &db.url, &prefix, &fast).await;
    wait_alive(&base, 2).await;

    let mut bot = Bot::connect(&base, options("p0", "pw")).await.expect("connect");
    let Some(BotEvent::Joined(first)) = bot.next_event().await else { panic!("no join") };
    // `a` is the first owner, whichever server the allocator picked.
    let (a, other) = if first.server_id == "gs-a" { (&gs_a, "gs-b") } else { (&gs_b, "gs-a") };
    bot.act("on_a", None).await.unwrap();
    until_me(&mut bot, |me| me.status == "on_a").await;
    // Let gs-a write a snapshot of that.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    a.proc.signal("-STOP");
    let moved = joined_elsewhere(&mut bot, &first.server_id).await;
    assert_eq!(moved.server_id, other);
    bot.act("on_b", None).await.unwrap();
    until_me(&mut bot, |me| me.status == "on_b").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The old owner wakes up, still holding the world with its old fence.
    a.proc.signal("-CONT");
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.metric("arena_live_worlds").await > 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "the old owner never let the world go");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Whatever it tried to write, the stores hold the new owner's state.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let client = redis::Client::open(shared_redis()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let hot = arena_gameserver::persist::snapshots::RedisSnapshots::new(conn, &prefix, Duration::from_secs(60))
        .load("pw")
        .await
        .unwrap()
        .unwrap();
    let pool = db.pool().await;
    let durable =
        arena_gameserver::persist::snapshots::PgSnapshots::new(pool.clone(), "t").load("pw").await.unwrap().unwrap();
    for snap in [&hot, &durable] {
        let room = snap.decode().unwrap();
        let status: Vec<String> = room.world.bots().map(|b| b.status.clone()).collect();
        assert_eq!(status, vec!["on_b".to_string()], "fence {}", snap.fence);
    }
    assert_eq!(hot.fence, durable.fence);
    let old_fence_rows: i64 = sqlx::query("SELECT count(*) FROM world_snapshots WHERE world_id = 'pw' AND fence > $1")
        .bind(hot.fence as i64)
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(old_fence_rows, 0);
    let refused = a.metric("arena_snapshots_refused_total").await;
    let log = a.proc.log();
    let evicted_by_heartbeat =
        log.contains("world evicted") || log.contains("suspended world let go") || log.contains("lease ran out");
    assert!(
        refused > 0.0 || evicted_by_heartbeat,
        "the old owner was neither refused nor told to let go:\n{}",
        a.proc.log()
    );
    bot.shutdown().await;
    clear_redis(&shared_redis(), &prefix).await;
    pool.close().await;
    db.drop_db().await;
}

/// Chat `n` lines, 10 per second, each acknowledged.
async fn chat(c: &mut Client, tag: &str, from: usize, n: usize) {
    for i in from..from + n {
        let seq = c.input(Input::Say(format!("{tag}-{i}"))).await.unwrap();
        common::recv_until(c, |m, _| matches!(m, ServerMsg::Update(u) if u.ack_seq >= seq)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn standalone(db_url: &str, buffer: usize) -> (GameserverProc, String) {
    let args: Vec<String> =
        ["--database-url", db_url, "--flush-every-ms", "200", "--activity-buffer", &buffer.to_string()]
            .map(String::from)
            .into();
    let p = start_gameserver(GameserverOpts { allocators: vec![], extra: args, ..GameserverOpts::new("gs-alone", "") })
        .await;
    let ws = p.ws_url.clone();
    (p, ws)
}

async fn count_said(db_url: &str, tag: &str) -> i64 {
    let pool = arena_gameserver::persist::connect_pg(db_url).await.unwrap();
    let n = sqlx::query("SELECT count(*) FROM activity WHERE kind = 'say' AND data->>'text' LIKE $1")
        .bind(format!("{tag}-%"))
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    pool.close().await;
    n
}

#[tokio::test]
async fn postgres_down_for_ten_seconds_loses_nothing_the_buffer_holds() {
    let pg = ThrowawayPg::start();
    let out = Command::new(workspace_bin("arena-gameserver"))
        .args(["migrate", "--database-url", &pg.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));

    // A buffer far larger than 10 s of chat: nothing may be lost.
    let (server, ws) = standalone(&pg.url(), 100_000).await;
    let ticket = |bot: &str| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let grant = arena_sdk::ticket::Grant::new("outage", bot);
        arena_sdk::ticket::mint(&arena_sdk::ticket::TicketKey::development(), &grant, 60, now).unwrap().0
    };
    let mut c = Client::connect(&ws, Encoding::MsgPack).await.unwrap();
    c.join(&ticket("talker"), None).await.unwrap();
    chat(&mut c, "big", 0, 10).await;
    pg.stop();
    chat(&mut c, "big", 10, 100).await; // 10 s of chat while PostgreSQL is down
    pg.restart();
    chat(&mut c, "big", 110, 5).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while count_said(&pg.url(), "big").await < 115 {
        assert!(tokio::time::Instant::now() < deadline, "not all lines arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(server.metric("arena_activity_dropped_total").await, 0.0);
    assert!(server.metric("arena_activity_write_errors_total").await > 0.0, "the outage was noticed");
    c.leave().await.unwrap();
    drop(server);

    // A buffer of 20 records overflows during the outage: the loss is counted and logged.
    let (server, ws) = standalone(&pg.url(), 20).await;
    let mut c = Client::connect(&ws, Encoding::MsgPack).await.unwrap();
    c.join(&ticket("talker2"), None).await.unwrap();
    pg.stop();
    chat(&mut c, "small", 0, 40).await;
    pg.restart();
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.metric("arena_activity_queued").await > 0.0 || count_said(&pg.url(), "small").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the buffer never drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let written = count_said(&pg.url(), "small").await;
    let dropped = server.metric("arena_activity_dropped_total").await;
    assert!(written < 40 && written > 0, "written {written}");
    assert!(dropped >= (40 - written) as f64, "dropped {dropped}, written {written}");
    assert!(server.proc.log().contains("activity buffer full"), "the loss is logged:\n{}", server.proc.log());
    c.leave().await.unwrap();
}

/// A join that fails for a reason the client can retry — the world's saved state could not be
/// loaded — does not burn its ticket: the same ticket joins once the database is back.
#[tokio::test]
async fn a_failed_join_does_not_burn_its_ticket() {
    let pg = ThrowawayPg::start();
    let out = Command::new(workspace_bin("arena-gameserver"))
        .args(["migrate", "--database-url", &pg.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
    let (_server, ws) = standalone(&pg.url(), 1000).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let grant = arena_sdk::ticket::Grant::new("retry-world", "patient");
    let ticket = arena_sdk::ticket::mint(&arena_sdk::ticket::TicketKey::development(), &grant, 60, now).unwrap().0;
    pg.stop();
    let mut c = Client::connect(&ws, Encoding::MsgPack).await.unwrap();
    match c.join(&ticket, None).await {
        Err(arena_sdk::client::ClientError::Refused(e)) => assert_eq!(e.code.as_str(), "unavailable"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    pg.restart();
    let mut c = Client::connect(&ws, Encoding::MsgPack).await.unwrap();
    let w = c.join(&ticket, None).await.expect("the same ticket joins once the world can be loaded");
    assert_eq!(w.world, "retry-world");
    // Used now: a third try is refused as reused.
    let mut again = Client::connect(&ws, Encoding::MsgPack).await.unwrap();
    match again.join(&ticket, None).await {
        Err(arena_sdk::client::ClientError::Refused(e)) => assert_eq!(e.code.as_str(), "ticket_reused"),
        other => panic!("expected ticket_reused, got {other:?}"),
    }
}
