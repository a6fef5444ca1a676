//! The registry contract, run against the in-memory registry and against the real Redis
//! (`ARENA_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`; an unreachable Redis fails the
//! test, it is never skipped). Each Redis case uses its own key prefix and removes it afterwards.

use arena_allocator::registry::memory::MemoryRegistry;
use arena_allocator::registry::redis::RedisRegistry;
use arena_allocator::registry::{Conflict, Registry, Reserve, ReserveKind, Reserved, Timing};
use arena_allocator::unix_ms;
use arena_sdk::allocator_api::{Endpoints, Heartbeat, ServerState, WorldReport};

const TIMING: Timing = Timing { server_timeout_ms: 5_000, placement_grace_ms: 20_000 };

fn redis_url() -> String {
    std::env::var("ARENA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn redis_registry() -> (RedisRegistry, String) {
    let prefix = format!("{{arena-test-{}}}", arena_sdk::ticket::new_nonce());
    let r = RedisRegistry::connect(&redis_url(), &prefix, TIMING)
        .await
        .unwrap_or_else(|e| panic!("Redis at {} is required for this test: {e}", redis_url()));
    r.ping().await.unwrap_or_else(|e| panic!("Redis at {} does not answer: {e}", redis_url()));
    (r, prefix)
}

async fn cleanup(prefix: &str) {
    let client = ::redis::Client::open(redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut con).await.unwrap();
    if !keys.is_empty() {
        let _: () = ::redis::cmd("DEL").arg(keys).query_async(&mut con).await.unwrap();
    }
}

fn hb(server: &str, max_worlds: u32, worlds: Vec<WorldReport>) -> Heartbeat {
    Heartbeat {
        server_id: server.into(),
        region: "us".into(),
        endpoints: Endpoints { ws: format!("ws://{server}/ws") },
        state: ServerState::Ready,
        max_worlds,
        world_capacity: 3,
        worlds,
    }
}

fn report(world: &str, occupancy: u32, joined: &[&str]) -> WorldReport {
    WorldReport { world_id: world.into(), fence: 0, occupancy, joined: joined.iter().map(|s| s.to_string()).collect() }
}

fn place<'a>(world: &'a str, server: &'a str, id: &'a str, now: u64) -> Reserve<'a> {
    Reserve { world, server, kind: ReserveKind::Place, id, now_ms: now, expires_ms: now + 15_000 }
}

fn seat<'a>(world: &'a str, server: &'a str, fence: u64, id: &'a str, now: u64) -> Reserve<'a> {
    Reserve { world, server, kind: ReserveKind::Seat { fence }, id, now_ms: now, expires_ms: now + 15_000 }
}

fn ok_fence(r: Reserved) -> u64 {
    match r {
        Reserved::Ok { fence, .. } => fence,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

async fn seats_fill_to_capacity_and_joins_consume_reservations<R: Registry>(r: R) {
    let now = unix_ms();
    r.heartbeat(&hb("a", 2, vec![]), now).await.unwrap();
    let fence = ok_fence(r.reserve(&place("w", "a", "r1", now)).await.unwrap());
    assert_eq!(r.reserve(&seat("w", "a", fence, "r2", now)).await.unwrap(), Reserved::Ok { fence, used: 2 });
    assert_eq!(r.reserve(&seat("w", "a", fence, "r3", now)).await.unwrap(), Reserved::Ok { fence, used: 3 });
    assert_eq!(r.reserve(&seat("w", "a", fence, "r4", now)).await.unwrap(), Reserved::Conflict(Conflict::WorldFull));
    // Two bots joined with r1 and r2: occupancy 2, those reservations consumed, r3 still pending.
    let reply = r.heartbeat(&hb("a", 2, vec![report("w", 2, &["r1", "r2"])]), now).await.unwrap();
    assert_eq!(reply.fences.get("w"), Some(&fence));
    assert!(reply.evict.is_empty());
    assert_eq!(r.reserve(&seat("w", "a", fence, "r5", now)).await.unwrap(), Reserved::Conflict(Conflict::WorldFull));
    // A bot leaves: one seat frees.
    r.heartbeat(&hb("a", 2, vec![report("w", 1, &[])]), now).await.unwrap();
    assert_eq!(r.reserve(&seat("w", "a", fence, "r6", now)).await.unwrap(), Reserved::Ok { fence, used: 3 });
    // Cancelling a reservation frees its seat too.
    assert!(r.release("w", "r6").await.unwrap());
    assert!(!r.release("w", "r6").await.unwrap());
    assert_eq!(r.reserve(&seat("w", "a", fence, "r7", now)).await.unwrap(), Reserved::Ok { fence, used: 3 });
    // Full worlds are counted, not listed; locate finds them.
    let snap = r.snapshot(now).await.unwrap();
    assert!(snap.worlds.is_empty(), "{snap:?}");
    assert_eq!(snap.placed.get("a"), Some(&1));
    let w = r.locate("w", now).await.unwrap().unwrap();
    assert_eq!((w.server.as_str(), w.fence, w.used), ("a", fence, 3));
    assert!(r.locate("nowhere", now).await.unwrap().is_none());
    // A world with a free seat is listed with its use.
    r.heartbeat(&hb("a", 2, vec![report("w", 0, &[])]), now).await.unwrap();
    let snap = r.snapshot(now).await.unwrap();
    assert_eq!(snap.worlds.len(), 1);
    assert_eq!((snap.worlds[0].id.as_str(), snap.worlds[0].used), ("w", 2), "occupancy 0 + 2 pending reservations");
}

async fn unused_reservations_expire<R: Registry>(r: R) {
    let now = unix_ms();
    r.heartbeat(&hb("a", 1, vec![]), now).await.unwrap();
    let short = |id: &'static str, at: u64| Reserve { expires_ms: at + 50, ..place("w", "a", id, at) };
    let fence = ok_fence(r.reserve(&short("r1", now)).await.unwrap());
    ok_fence(r.reserve(&Reserve { kind: ReserveKind::Seat { fence }, ..short("r2", now) }).await.unwrap());
    ok_fence(r.reserve(&Reserve { kind: ReserveKind::Seat { fence }, ..short("r3", now) }).await.unwrap());
    let later = now + 100;
    let again = Reserve { kind: ReserveKind::Seat { fence }, ..short("r4", later) };
    assert_eq!(r.reserve(&again).await.unwrap(), Reserved::Ok { fence, used: 1 }, "expired seats are free again");
}

async fn silent_servers_lose_their_worlds_with_a_higher_fence<R: Registry>(r: R) {
    let now = unix_ms();
    r.heartbeat(&hb("a", 1, vec![]), now).await.unwrap();
    r.heartbeat(&hb("b", 1, vec![]), now).await.unwrap();
    let f1 = ok_fence(r.reserve(&place("w", "a", "r1", now)).await.unwrap());
    // While a is alive, w cannot be placed on b.
    assert_eq!(
        r.reserve(&place("w", "b", "r2", now)).await.unwrap(),
        Reserved::Conflict(Conflict::LiveElsewhere { server: "a".into(), fence: f1 })
    );
    // b keeps reporting; a falls silent past the timeout.
    let later = now + 6_000;
    r.heartbeat(&hb("b", 1, vec![]), later).await.unwrap();
    assert_eq!(
        r.reserve(&seat("w", "a", f1, "r3", later)).await.unwrap(),
        Reserved::Conflict(Conflict::ServerUnavailable)
    );
    let f2 = ok_fence(r.reserve(&place("w", "b", "r4", later)).await.unwrap());
    assert!(f2 > f1, "the new placement has a higher fence ({f2} > {f1})");
    // The old owner comes back and reports w: it is told to let it go.
    let reply = r.heartbeat(&hb("a", 1, vec![report("w", 1, &[])]), later + 10).await.unwrap();
    assert_eq!(reply.evict, vec!["w".to_string()]);
    assert!(!reply.fences.contains_key("w"));
    // A seat with the old fence is refused.
    assert_eq!(r.reserve(&seat("w", "b", f1, "r5", later)).await.unwrap(), Reserved::Conflict(Conflict::WorldMoved));
}

async fn world_room_and_draining_are_respected<R: Registry>(r: R) {
    let now = unix_ms();
    r.heartbeat(&hb("a", 1, vec![]), now).await.unwrap();
    ok_fence(r.reserve(&place("w1", "a", "r1", now)).await.unwrap());
    assert_eq!(r.reserve(&place("w2", "a", "r2", now)).await.unwrap(), Reserved::Conflict(Conflict::ServerFull));
    let draining = Heartbeat { state: ServerState::Draining, ..hb("a", 1, vec![]) };
    r.heartbeat(&draining, now).await.unwrap();
    assert_eq!(
        r.reserve(&seat("w1", "a", 1, "r3", now)).await.unwrap(),
        Reserved::Conflict(Conflict::ServerUnavailable)
    );
    assert_eq!(
        r.reserve(&place("w9", "nobody", "r4", now)).await.unwrap(),
        Reserved::Conflict(Conflict::ServerUnavailable)
    );
}

async fn unknown_worlds_are_adopted_and_unreported_ones_forgotten<R: Registry>(r: R) {
    let now = unix_ms();
    let reply = r.heartbeat(&hb("a", 3, vec![report("direct", 2, &[])]), now).await.unwrap();
    let adopted = *reply.fences.get("direct").expect("adopted with a fence");
    assert!(adopted > 0);
    assert_eq!(
        r.reserve(&seat("direct", "a", adopted, "r1", now)).await.unwrap(),
        Reserved::Ok { fence: adopted, used: 3 }
    );
    // The world was unloaded: it stops being reported. Once its reservation is gone (consumed)
    // and the grace passed, the placement is forgotten.
    r.heartbeat(&hb("a", 3, vec![report("direct", 0, &["r1"])]), now).await.unwrap();
    r.heartbeat(&hb("a", 3, vec![]), now + 1_000).await.unwrap();
    assert_eq!(r.snapshot(now).await.unwrap().worlds.len(), 1, "within the grace it stays placed");
    r.heartbeat(&hb("a", 3, vec![]), now + 21_000).await.unwrap();
    assert!(r.snapshot(now).await.unwrap().worlds.is_empty());
    // A draining server that stops reporting a world lets it go at once.
    let f =
        *r.heartbeat(&hb("a", 3, vec![report("leaving", 1, &[])]), now).await.unwrap().fences.get("leaving").unwrap();
    assert!(f > adopted);
    let farewell = Heartbeat { state: ServerState::Draining, ..hb("a", 3, vec![]) };
    r.heartbeat(&farewell, now + 100).await.unwrap();
    assert!(r.locate("leaving", now + 100).await.unwrap().is_none());
    // Servers silent for long are purged.
    assert_eq!(r.purge(now + 1).await.unwrap(), 0);
    assert_eq!(r.purge(now + 30_000).await.unwrap(), 1);
    assert!(r.snapshot(now).await.unwrap().servers.is_empty());
}

async fn a_stale_copy_is_not_adopted_after_its_world_moved_and_was_let_go<R: Registry>(r: R) {
    let now = unix_ms();
    r.heartbeat(&hb("a", 2, vec![]), now).await.unwrap();
    r.heartbeat(&hb("b", 2, vec![]), now).await.unwrap();
    let f1 = ok_fence(r.reserve(&place("w", "a", "r1", now)).await.unwrap());
    // a falls silent; w moves to b, which then drains and lets it go.
    let later = now + 6_000;
    r.heartbeat(&hb("b", 2, vec![]), later).await.unwrap();
    let f2 = ok_fence(r.reserve(&place("w", "b", "r2", later)).await.unwrap());
    r.heartbeat(&Heartbeat { state: ServerState::Draining, ..hb("b", 2, vec![]) }, later + 10).await.unwrap();
    assert!(r.locate("w", later + 10).await.unwrap().is_none());
    // a wakes up still holding w with the old fence: it must let it go, not be handed a new fence.
    let stale = WorldReport { fence: f1, ..report("w", 1, &[]) };
    let reply = r.heartbeat(&hb("a", 2, vec![stale]), later + 20).await.unwrap();
    assert_eq!(reply.evict, vec!["w".to_string()]);
    assert!(!reply.fences.contains_key("w"));
    // The next placement of w still outranks both.
    let f3 = ok_fence(r.reserve(&place("w", "a", "r3", later + 30)).await.unwrap());
    assert!(f3 > f2 && f2 > f1);
}

async fn fences_keep_growing_past_what_servers_report<R: Registry>(r: R) {
    let now = unix_ms();
    // A server reports a world held with a large fence (from before a registry restart).
    // Sixteen digits, like the in-memory registry's time-seeded fences.
    let held = WorldReport { fence: 1_795_000_000_000_000, ..report("old", 1, &[]) };
    let reply = r.heartbeat(&hb("a", 3, vec![held.clone()]), now).await.unwrap();
    let adopted = reply.fences["old"];
    assert!(adopted > held.fence, "{adopted} > {}", held.fence);
    let fresh = ok_fence(r.reserve(&place("new", "a", "r1", now)).await.unwrap());
    assert!(fresh > adopted);
}

async fn purged_servers_take_their_placements_along<R: Registry>(r: R) {
    let now = unix_ms();
    r.heartbeat(&hb("gone", 2, vec![]), now).await.unwrap();
    ok_fence(r.reserve(&place("orphan", "gone", "r1", now)).await.unwrap());
    assert_eq!(r.purge(now + 1).await.unwrap(), 1);
    assert!(r.locate("orphan", now + 1).await.unwrap().is_none());
    assert!(r.snapshot(now + 1).await.unwrap().worlds.is_empty());
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::MemoryRegistry::new(super::TIMING)).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    let (r, prefix) = super::redis_registry().await;
                    super::$case(r).await;
                    super::cleanup(&prefix).await;
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
    fences_keep_growing_past_what_servers_report,
    purged_servers_take_their_placements_along,
);
