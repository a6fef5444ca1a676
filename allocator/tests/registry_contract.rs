//! The registry contract, run against the in-memory registry (on a clock the test moves) and
//! against the real Redis (`ARENA_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`, on Redis's
//! own clock: the test waits; an unreachable Redis fails the test, it is never skipped). Each
//! Redis case uses its own key prefix and removes it afterwards.

use std::sync::Arc;
use std::time::Duration;

use arena_allocator::registry::memory::MemoryRegistry;
use arena_allocator::registry::redis::RedisRegistry;
use arena_allocator::registry::schema::{ManualClock, SystemClock, bot_seat_key, lastfence_key};
use arena_allocator::registry::{Conflict, Registry, RegistryError, Reserve, ReserveKind, Reserved, Timing};
use arena_sdk::allocator_api::{Endpoints, Heartbeat, RefusedTicket, ServerState, WorldReport};
use arena_testkit::stores::{clear_redis, redis_prefix, shared_redis};

/// Short, so that the Redis cases (on real time) stay quick.
const TIMING: Timing = Timing {
    server_timeout_ms: 1_000,
    placement_grace_ms: 1_500,
    seat_ttl_ms: 2_000,
    lastfence_ttl_ms: 2_500,
    fence_ahead_us: 86_400_000_000,
};
const TTL: u64 = 600;

/// A registry and the way its time moves.
struct Case<R> {
    r: R,
    clock: Option<ManualClock>,
    prefix: Option<String>,
}

impl<R: Registry> Case<R> {
    /// Let `ms` of registry time pass.
    async fn pass(&self, ms: u64) {
        match &self.clock {
            Some(c) => c.advance(ms),
            None => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    }

    /// Let `ms` pass while `alive` keeps heartbeating (so the registry sees no blackout).
    async fn pass_beating(&self, ms: u64, alive: &Heartbeat) {
        let step = TIMING.server_timeout_ms / 5;
        let mut left = ms;
        while left > 0 {
            let d = left.min(step);
            self.pass(d).await;
            left -= d;
            self.r.heartbeat(alive).await.unwrap();
        }
    }

    /// The registry's time in microseconds (for fence checks).
    fn now_us(&self) -> u64 {
        match &self.clock {
            Some(c) => arena_allocator::registry::schema::RegistryClock::now_ms(c) * 1000,
            None => arena_allocator::registry::schema::RegistryClock::now_us(&SystemClock),
        }
    }
}

fn hb(server: &str, max_worlds: u32, worlds: Vec<WorldReport>) -> Heartbeat {
    Heartbeat {
        server_id: server.into(),
        region: "us".into(),
        endpoints: Endpoints::websocket(format!("ws://{server}/ws")),
        state: ServerState::Ready,
        max_worlds,
        world_capacity: 3,
        worlds,
        load: None,
        version: None,
    }
}

fn report(world: &str, occupancy: u32, joined: &[&str]) -> WorldReport {
    WorldReport {
        world_id: world.into(),
        fence: 0,
        occupancy,
        joined: joined.iter().map(|s| s.to_string()).collect(),
        bots: None,
        refused: vec![],
    }
}

fn with_bots(mut w: WorldReport, bots: &[&str]) -> WorldReport {
    w.bots = Some(bots.iter().map(|s| s.to_string()).collect());
    w
}

/// No deadline to speak of (the contract cases do not time out).
const NO_DEADLINE: u64 = u64::MAX / 4;

fn place<'a>(world: &'a str, server: &'a str, id: &'a str) -> Reserve<'a> {
    Reserve {
        world,
        server,
        kind: ReserveKind::Place,
        id,
        bot: id,
        requested: None,
        ttl_ms: TTL,
        deadline_ms: NO_DEADLINE,
    }
}

fn seat<'a>(world: &'a str, server: &'a str, fence: u64, id: &'a str) -> Reserve<'a> {
    Reserve {
        world,
        server,
        kind: ReserveKind::Seat { fence },
        id,
        bot: id,
        requested: None,
        ttl_ms: TTL,
        deadline_ms: NO_DEADLINE,
    }
}

fn ok_fence(r: Reserved) -> u64 {
    match r {
        Reserved::Ok { fence, .. } => fence,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

async fn seats_fill_to_capacity_and_joins_consume_reservations<R: Registry>(c: Case<R>) {
    let r = &c.r;
    r.heartbeat(&hb("a", 2, vec![])).await.unwrap();
    let fence = ok_fence(r.reserve(&place("w", "a", "r1")).await.unwrap());
    ok_fence(r.reserve(&seat("w", "a", fence, "r2")).await.unwrap());
    ok_fence(r.reserve(&seat("w", "a", fence, "r3")).await.unwrap());
    assert_eq!(r.reserve(&seat("w", "a", fence, "r4")).await.unwrap(), Reserved::Conflict(Conflict::WorldFull));
    assert_eq!(r.locate(Some("w"), None).await.unwrap().world.unwrap().used, 3);
    // Two joined: their reservations become occupancy, nothing double counts.
    let reply = r.heartbeat(&hb("a", 2, vec![report("w", 2, &["r1", "r2"])])).await.unwrap();
    assert_eq!(reply.fences["w"], fence);
    assert_eq!(r.locate(Some("w"), None).await.unwrap().world.unwrap().used, 3);
    // One left: a seat frees; a released reservation frees another.
    r.heartbeat(&hb("a", 2, vec![report("w", 1, &[])])).await.unwrap();
    ok_fence(r.reserve(&seat("w", "a", fence, "r5")).await.unwrap());
    assert!(r.release("w", "r3", "r3").await.unwrap());
    assert!(!r.release("w", "r3", "r3").await.unwrap());
    ok_fence(r.reserve(&seat("w", "a", fence, "r6")).await.unwrap());
    assert_eq!(r.locate(Some("w"), None).await.unwrap().world.unwrap().used, 3);
}

async fn unused_reservations_expire<R: Registry>(c: Case<R>) {
    let a = hb("a", 2, vec![]);
    c.r.heartbeat(&a).await.unwrap();
    let fence = ok_fence(c.r.reserve(&place("w", "a", "r1")).await.unwrap());
    assert_eq!(c.r.locate(Some("w"), Some("r1")).await.unwrap().reservation.as_deref(), Some("w"));
    c.pass_beating(TTL + 100, &hb("a", 2, vec![report("w", 0, &[])])).await;
    assert_eq!(c.r.locate(Some("w"), None).await.unwrap().world.unwrap().used, 0);
    assert_eq!(c.r.locate(None, Some("r1")).await.unwrap().reservation, None, "the bot's reservation went too");
    ok_fence(c.r.reserve(&seat("w", "a", fence, "r2")).await.unwrap());
}

async fn silent_servers_lose_their_worlds_with_a_higher_fence<R: Registry>(c: Case<R>) {
    let r = &c.r;
    r.heartbeat(&hb("a", 2, vec![])).await.unwrap();
    r.heartbeat(&hb("b", 2, vec![])).await.unwrap();
    let f1 = ok_fence(r.reserve(&place("w", "a", "r1")).await.unwrap());
    assert_eq!(
        r.reserve(&place("w", "b", "r2")).await.unwrap(),
        Reserved::Conflict(Conflict::LiveElsewhere { server: "a".into(), fence: f1 }),
        "live on a"
    );
    // a falls silent while b keeps reporting: after the timeout w moves to b.
    c.pass_beating(TIMING.server_timeout_ms + 200, &hb("b", 2, vec![])).await;
    assert_eq!(r.reserve(&seat("w", "a", f1, "r3")).await.unwrap(), Reserved::Conflict(Conflict::ServerUnavailable));
    let f2 = ok_fence(r.reserve(&place("w", "b", "r4")).await.unwrap());
    assert!(f2 > f1, "{f2} > {f1}");
    // a comes back still reporting w: it is told to let it go.
    let reply = r.heartbeat(&hb("a", 2, vec![WorldReport { fence: f1, ..report("w", 1, &[]) }])).await.unwrap();
    assert_eq!(reply.evict, vec!["w".to_string()]);
}

async fn world_room_and_draining_are_respected<R: Registry>(c: Case<R>) {
    let r = &c.r;
    r.heartbeat(&hb("a", 1, vec![])).await.unwrap();
    ok_fence(r.reserve(&place("w1", "a", "r1")).await.unwrap());
    assert_eq!(r.reserve(&place("w2", "a", "r2")).await.unwrap(), Reserved::Conflict(Conflict::ServerFull));
    r.heartbeat(&Heartbeat { state: ServerState::Draining, ..hb("a", 1, vec![report("w1", 1, &["r1"])]) })
        .await
        .unwrap();
    let fence = r.locate(Some("w1"), None).await.unwrap().world.unwrap().fence;
    assert_eq!(
        r.reserve(&seat("w1", "a", fence, "r3")).await.unwrap(),
        Reserved::Conflict(Conflict::ServerUnavailable)
    );
}

async fn unknown_worlds_are_adopted_and_unreported_ones_forgotten<R: Registry>(c: Case<R>) {
    let r = &c.r;
    // A world the registry never placed (a direct join) is adopted.
    let reply = r.heartbeat(&hb("a", 3, vec![report("direct", 1, &[])])).await.unwrap();
    assert!(reply.fences["direct"] > 0);
    // A placed world the server never loads is listed as placed there, then forgotten after
    // the grace (its reservation expired).
    ok_fence(r.reserve(&place("never", "a", "r1")).await.unwrap());
    let reply = r.heartbeat(&hb("a", 3, vec![report("direct", 1, &[])])).await.unwrap();
    assert!(reply.placed.contains_key("never"), "{reply:?}");
    assert!(reply.watermark >= reply.placed["never"] && reply.watermark >= reply.fences["direct"]);
    assert_eq!(reply.lease_ms, TIMING.lease_ms());
    c.pass_beating(TIMING.placement_grace_ms + 300, &hb("a", 3, vec![report("direct", 1, &[])])).await;
    assert!(r.locate(Some("never"), None).await.unwrap().world.is_none());
    // A draining server's worlds are let go as soon as it stops reporting them.
    r.heartbeat(&Heartbeat { state: ServerState::Draining, ..hb("a", 3, vec![]) }).await.unwrap();
    assert!(r.locate(Some("direct"), None).await.unwrap().world.is_none());
}

async fn a_stale_copy_is_not_adopted_after_its_world_moved_and_was_let_go<R: Registry>(c: Case<R>) {
    let r = &c.r;
    r.heartbeat(&hb("a", 2, vec![])).await.unwrap();
    r.heartbeat(&hb("b", 2, vec![])).await.unwrap();
    let f1 = ok_fence(r.reserve(&place("w", "a", "r1")).await.unwrap());
    // a falls silent; w moves to b, which then drains and lets it go.
    c.pass_beating(TIMING.server_timeout_ms + 200, &hb("b", 2, vec![])).await;
    let f2 = ok_fence(r.reserve(&place("w", "b", "r2")).await.unwrap());
    r.heartbeat(&Heartbeat { state: ServerState::Draining, ..hb("b", 2, vec![]) }).await.unwrap();
    assert!(r.locate(Some("w"), None).await.unwrap().world.is_none());
    // a wakes up still holding w with the old fence: it must let it go, not be handed a new fence.
    let stale = WorldReport { fence: f1, ..report("w", 1, &[]) };
    let reply = r.heartbeat(&hb("a", 2, vec![stale.clone()])).await.unwrap();
    assert_eq!(reply.evict, vec!["w".to_string()]);
    assert!(!reply.fences.contains_key("w"));
    // The next placement of w still outranks both.
    let f3 = ok_fence(r.reserve(&place("w", "a", "r3")).await.unwrap());
    assert!(f3 > f2 && f2 > f1);
    // The memory of the last fence does not grow for ever: it expires.
    r.release("w", "r3", "r3").await.unwrap();
    r.heartbeat(&Heartbeat { state: ServerState::Draining, ..hb("a", 2, vec![]) }).await.unwrap();
    c.pass(TIMING.lastfence_ttl_ms + 200).await;
    r.purge(u64::MAX).await.unwrap();
    if let Some(prefix) = &c.prefix {
        let mut con = redis_con().await;
        let exists: bool = ::redis::cmd("EXISTS").arg(lastfence_key(prefix, "w")).query_async(&mut con).await.unwrap();
        assert!(!exists, "lastfence expired");
    }
}

async fn fences_are_bounded_and_keep_growing<R: Registry>(c: Case<R>) {
    let r = &c.r;
    // A new fence is at least the registry's clock in microseconds: a registry that lost its
    // data still issues fences above every earlier one.
    r.heartbeat(&hb("a", 5, vec![])).await.unwrap();
    let before = c.now_us();
    let fresh = ok_fence(r.reserve(&place("new", "a", "r1")).await.unwrap());
    assert!(fresh >= before, "{fresh} >= {before}");
    assert!(fresh < arena_sdk::allocator_api::MAX_FENCE);
    // A server holding a world with a fence from before a restart (a little ahead, even) raises
    // the counter: later fences outrank it.
    let held = WorldReport { fence: fresh + 5_000_000, ..report("old", 1, &[]) };
    let reply = r.heartbeat(&hb("a", 5, vec![held.clone()])).await.unwrap();
    let adopted = reply.fences["old"];
    assert!(adopted > held.fence, "{adopted} > {}", held.fence);
    let next = ok_fence(r.reserve(&place("newer", "a", "r2")).await.unwrap());
    assert!(next > adopted);
    // A fence far ahead of the registry's clock is refused, and changes nothing.
    let bogus = WorldReport { fence: c.now_us() + 2 * TIMING.fence_ahead_us, ..report("bogus", 1, &[]) };
    assert!(matches!(r.heartbeat(&hb("a", 5, vec![bogus])).await, Err(RegistryError::FenceAhead(w)) if w == "bogus"));
    assert!(r.locate(Some("bogus"), None).await.unwrap().world.is_none());
    let after = ok_fence(r.reserve(&place("last", "a", "r3")).await.unwrap());
    assert!(after < c.now_us() + 10_000_000, "the counter was not pushed ahead");
}

async fn purged_servers_take_their_placements_along<R: Registry>(c: Case<R>) {
    let r = &c.r;
    r.heartbeat(&hb("gone", 2, vec![])).await.unwrap();
    ok_fence(r.reserve(&place("orphan", "gone", "r1")).await.unwrap());
    c.pass(5).await;
    assert_eq!(r.purge(1).await.unwrap(), 1);
    assert!(r.locate(Some("orphan"), None).await.unwrap().world.is_none());
    assert!(r.snapshot().await.unwrap().worlds.is_empty());
}

async fn one_bot_holds_one_seat<R: Registry>(c: Case<R>) {
    let r = &c.r;
    // Named worlds come later in this case: let the registry's warm-up pass first.
    r.heartbeat(&hb("a", 3, vec![])).await.unwrap();
    c.pass_beating(TIMING.warmup_ms() + 50, &hb("a", 3, vec![])).await;
    let fence = ok_fence(r.reserve(&place("w1", "a", "x")).await.unwrap());
    // The same bot again, sent elsewhere by an index: its reservation is the answer.
    let again = Reserve { bot: "x", ..place("w2", "a", "x-2") };
    assert_eq!(
        r.reserve(&again).await.unwrap(),
        Reserved::Held { world: "w1".into(), server: "a".into(), fence },
        "a reservation is returned, not doubled"
    );
    assert!(r.locate(Some("w2"), None).await.unwrap().world.is_none(), "nothing was placed for it");
    // It joins: its server lists it in w1, and its reservation stops counting.
    let reply = r.heartbeat(&hb("a", 3, vec![with_bots(report("w1", 1, &["x"]), &["x"])])).await.unwrap();
    assert_eq!(reply.fences["w1"], fence);
    assert_eq!(r.locate(Some("w1"), Some("x")).await.unwrap().seat.as_deref(), Some("w1"));
    assert_eq!(r.locate(Some("w1"), None).await.unwrap().world.unwrap().used, 1);
    assert_eq!(
        r.reserve(&Reserve { bot: "x", ..place("w3", "a", "x-3") }).await.unwrap(),
        Reserved::Held { world: "w1".into(), server: "a".into(), fence }
    );
    // Asking for another world while seated: refused, naming where the bot sits.
    let elsewhere = Reserve { bot: "x", requested: Some("w9"), ..place("w9", "a", "x-4") };
    assert_eq!(
        r.reserve(&elsewhere).await.unwrap(),
        Reserved::Conflict(Conflict::SeatElsewhere { world: "w1".into() })
    );
    // A mere reservation gives way to a world the bot asks for.
    ok_fence(r.reserve(&place("w4", "a", "y")).await.unwrap());
    let moved = Reserve { bot: "y", requested: Some("w5"), ..place("w5", "a", "y-2") };
    assert!(matches!(r.reserve(&moved).await.unwrap(), Reserved::Ok { .. }));
    assert_eq!(r.locate(Some("w4"), Some("y")).await.unwrap().world.unwrap().used, 0, "the old one was released");
    // The bot leaves: its server stops listing it, and the bot is free again.
    r.heartbeat(&hb("a", 3, vec![with_bots(report("w1", 0, &[]), &[])])).await.unwrap();
    assert_eq!(r.locate(None, Some("x")).await.unwrap().seat, None);
    assert!(matches!(r.reserve(&Reserve { bot: "x", ..place("w1", "a", "x-5") }).await.unwrap(), Reserved::Ok { .. }));
}

async fn a_held_seat_comes_back_in_a_full_world_after_failover<R: Registry>(c: Case<R>) {
    let r = &c.r;
    r.heartbeat(&hb("a", 3, vec![])).await.unwrap();
    r.heartbeat(&hb("b", 3, vec![])).await.unwrap();
    let f1 = ok_fence(r.reserve(&place("w", "a", "p1")).await.unwrap());
    // w is full: three bots seated.
    let full = with_bots(report("w", 3, &["p1"]), &["p1", "p2", "p3"]);
    r.heartbeat(&hb("a", 3, vec![full])).await.unwrap();
    // a dies; b keeps reporting. A bot that holds a seat in w is told to place w.
    c.pass_beating(TIMING.server_timeout_ms + 200, &hb("b", 3, vec![])).await;
    assert_eq!(
        r.reserve(&Reserve { bot: "p2", ..place("other", "b", "t1") }).await.unwrap(),
        Reserved::Conflict(Conflict::HeldUnplaced { world: "w".into() })
    );
    // Placing w on b gives p2 its seat without counting one (the world comes back full).
    let back = r.reserve(&Reserve { bot: "p2", ..place("w", "b", "t2") }).await.unwrap();
    let Reserved::Held { world, server, fence: f2 } = back else { panic!("{back:?}") };
    assert_eq!((world.as_str(), server.as_str()), ("w", "b"));
    assert!(f2 > f1);
    assert_eq!(r.locate(Some("w"), None).await.unwrap().world.unwrap().used, 3, "its kept seats count");
    // Every other held bot gets its seat back in the full world; a stranger does not.
    for (i, bot) in ["p1", "p3"].iter().enumerate() {
        let id = format!("t{}", 3 + i);
        let got = r.reserve(&Reserve { bot, ..seat("w", "b", f2, &id) }).await.unwrap();
        assert_eq!(got, Reserved::Held { world: "w".into(), server: "b".into(), fence: f2 });
    }
    assert_eq!(r.reserve(&seat("w", "b", f2, "stranger")).await.unwrap(), Reserved::Conflict(Conflict::WorldFull));
}

async fn a_late_call_reserves_nothing<R: Registry>(c: Case<R>) {
    let r = &c.r;
    r.heartbeat(&hb("a", 3, vec![])).await.unwrap();
    let late = Reserve { deadline_ms: 1, ..place("w", "a", "r1") };
    assert_eq!(r.reserve(&late).await.unwrap(), Reserved::Conflict(Conflict::Late));
    assert!(r.locate(Some("w"), Some("r1")).await.unwrap() == Default::default(), "nothing placed, nothing held");
}

async fn refused_tickets_free_their_seats<R: Registry>(c: Case<R>) {
    let r = &c.r;
    r.heartbeat(&hb("a", 3, vec![])).await.unwrap();
    let fence = ok_fence(r.reserve(&place("w", "a", "r1")).await.unwrap());
    ok_fence(r.reserve(&seat("w", "a", fence, "r2")).await.unwrap());
    ok_fence(r.reserve(&seat("w", "a", fence, "r3")).await.unwrap());
    let mut w = report("w", 0, &[]);
    w.refused = vec![RefusedTicket { nonce: "r2".into(), bot: "r2".into() }];
    r.heartbeat(&hb("a", 3, vec![w])).await.unwrap();
    assert_eq!(r.locate(Some("w"), Some("r2")).await.unwrap().world.unwrap().used, 2);
    assert_eq!(r.locate(None, Some("r2")).await.unwrap().reservation, None);
    ok_fence(r.reserve(&seat("w", "a", fence, "r4")).await.unwrap());
}

async fn a_registry_blackout_does_not_kill_live_servers<R: Registry>(c: Case<R>) {
    let r = &c.r;
    r.heartbeat(&hb("a", 2, vec![])).await.unwrap();
    r.heartbeat(&hb("b", 2, vec![])).await.unwrap();
    let fence = ok_fence(r.reserve(&place("w", "a", "r1")).await.unwrap());
    // Nobody is heard from for longer than the timeout (the registry was out of reach); then b
    // reports first. a counts as heard from when the registry came back.
    c.pass(TIMING.server_timeout_ms + 300).await;
    r.heartbeat(&hb("b", 2, vec![])).await.unwrap();
    assert_eq!(
        r.reserve(&place("w", "b", "r2")).await.unwrap(),
        Reserved::Conflict(Conflict::LiveElsewhere { server: "a".into(), fence }),
        "w stays where it lives"
    );
    assert!(r.snapshot().await.unwrap().resume_ms > 0);
    // If a really is gone, it loses its worlds a timeout after the blackout ended.
    c.pass_beating(TIMING.server_timeout_ms + 200, &hb("b", 2, vec![])).await;
    assert!(matches!(r.reserve(&place("w", "b", "r3")).await.unwrap(), Reserved::Ok { .. }));
}

async fn a_fresh_registry_waits_before_placing_named_worlds<R: Registry>(c: Case<R>) {
    let r = &c.r;
    r.heartbeat(&hb("a", 3, vec![])).await.unwrap();
    let named = Reserve { requested: Some("home"), ..place("home", "a", "h1") };
    assert_eq!(r.reserve(&named).await.unwrap(), Reserved::Conflict(Conflict::WarmingUp));
    // New worlds with fresh ids are placed at once; named ones after the warm-up.
    ok_fence(r.reserve(&place("w-fresh", "a", "n1")).await.unwrap());
    c.pass_beating(TIMING.warmup_ms() + 100, &hb("a", 3, vec![])).await;
    ok_fence(r.reserve(&named).await.unwrap());
}

async fn seats_are_forgotten_when_no_server_lists_them<R: Registry>(c: Case<R>) {
    let r = &c.r;
    r.heartbeat(&hb("a", 3, vec![])).await.unwrap();
    ok_fence(r.reserve(&place("w", "a", "z")).await.unwrap());
    r.heartbeat(&hb("a", 3, vec![with_bots(report("w", 1, &["z"]), &["z"])])).await.unwrap();
    assert_eq!(r.locate(None, Some("z")).await.unwrap().seat.as_deref(), Some("w"));
    // Its server vanishes and nobody lists the bot again: the seat record expires.
    c.pass(TIMING.seat_ttl_ms + 300).await;
    r.purge(u64::MAX).await.unwrap();
    assert_eq!(r.locate(None, Some("z")).await.unwrap().seat, None);
    if let Some(prefix) = &c.prefix {
        let mut con = redis_con().await;
        let exists: bool = ::redis::cmd("EXISTS").arg(bot_seat_key(prefix, "z")).query_async(&mut con).await.unwrap();
        assert!(!exists);
    }
}

async fn redis_con() -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(shared_redis()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

fn memory_case() -> Case<MemoryRegistry> {
    let clock = ManualClock::new(1_795_000_000_000);
    Case { r: MemoryRegistry::with_clock(TIMING, Arc::new(clock.clone())), clock: Some(clock), prefix: None }
}

async fn redis_case() -> Case<RedisRegistry> {
    let prefix = redis_prefix("contract-");
    let r = RedisRegistry::connect(&shared_redis(), &prefix, TIMING, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("Redis at {} is required for this test: {e}", shared_redis()));
    r.ping().await.unwrap_or_else(|e| panic!("Redis at {} does not answer: {e}", shared_redis()));
    Case { r, clock: None, prefix: Some(prefix) }
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::memory_case()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    let c = super::redis_case().await;
                    let prefix = c.prefix.clone().unwrap();
                    super::$case(c).await;
                    super::clear_redis(&super::shared_redis(), &prefix).await;
                }
            )*
        }
    };
}

contract!(
    seats_fill_to_capacity_and_joins_consume_reservations,
    unused_reservations_expire,
    silent_servers_lose_their_worlds_with_a_higher_fence,
    world_room_and_draining_are_respected,
    unknown_worlds_are_adopted_and_unreported_ones_forgotten,
    a_stale_copy_is_not_adopted_after_its_world_moved_and_was_let_go,
    fences_are_bounded_and_keep_growing,
    purged_servers_take_their_placements_along,
    one_bot_holds_one_seat,
    a_held_seat_comes_back_in_a_full_world_after_failover,
    refused_tickets_free_their_seats,
    a_late_call_reserves_nothing,
    a_registry_blackout_does_not_kill_live_servers,
    a_fresh_registry_waits_before_placing_named_worlds,
    seats_are_forgotten_when_no_server_lists_them,
);
