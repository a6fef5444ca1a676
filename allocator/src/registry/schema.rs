//! The registry's schema and time, in one place: the keys (both registries keep the same data;
//! Redis under these names), the timing rules, and the clock.
//!
//! Keys under the prefix `P` (a hash tag such as `{arena}` keeps them in one Redis Cluster slot);
//! every key a client can make grow expires or is pruned:
//!
//! | key | type | holds | bounded by |
//! |---|---|---|---|
//! | `P:servers` | hash | server id → JSON `{region, ws, state, max_worlds, world_capacity, last_seen_ms, load, version}` | purge of silent servers |
//! | `P:placement` | hash | world → `server\|fence\|placed_ms` | forgotten when unloaded, moved or its server purged |
//! | `P:occ` | hash | world → occupancy its server reported | as placements |
//! | `P:open` | zset | world → seats used, worlds with a free seat | as placements |
//! | `P:sw:<server>` | set | worlds placed on the server | as placements; deleted on purge |
//! | `P:res:<world>` | zset | reservation id → expiry (ms) | expired members dropped; key expires with its last member |
//! | `P:botres:<bot>` | string | `world\|reservation id\|expiry` of the bot's live reservation | expires with it |
//! | `P:botseat:<bot>` | string | the world the bot holds a seat in | `seat_ttl_ms`, refreshed while its server lists it |
//! | `P:wbots:<world>` | set | the bots its server last listed | `seat_ttl_ms` |
//! | `P:lastfence:<world>` | string | the fence of the world's last placement | `lastfence_ttl_ms` |
//! | `P:fence` | string | the newest fence issued | one key |
//! | `P:hb_last`, `P:resume_ms`, `P:started` | string | registry-wide times (ms) | one key each |
//!
//! **Time** is the registry's: Redis scripts read `redis.call('TIME')`; the in-memory registry
//! reads its [`RegistryClock`]. Callers never pass their own clock, so a replica whose clock is
//! off cannot see live servers as dead.
//!
//! **Fences** are at most `2^53 − 1` (exact in JSON and in Lua), strictly increase for every
//! world for the life of the registry — a new one is larger than every earlier one and than the
//! registry's clock in microseconds, so even a registry that lost its data keeps issuing larger
//! ones — and a reported fence more than [`Timing::fence_ahead_us`] ahead of the clock is refused.
//!
//! **Leases**: a heartbeat's answer grants its server a lease of [`Timing::lease_ms`] from the
//! moment it *sent* the heartbeat; the registry moves a world off a server only once it has not
//! heard from it for `server_timeout_ms`, longer than the lease by [`Timing::lease_margin_ms`].
//!
//! **Blackouts**: when no server at all was heard from for half a server timeout, the registry
//! itself was out of reach; every server then counts as heard from at the moment it came back
//! (`P:resume_ms`), so an outage of Redis never makes live servers look dead.
//!
//! **Warm-up**: a registry that starts empty (first start, or Redis lost its data) does not place
//! worlds *named by a request* for [`Timing::warmup_ms`] — the time every server still serving a
//! world needs to report it (and be confirmed) or lose its lease. New worlds with fresh ids are
//! placed at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Timing rules of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A server not heard from for this long gets no new seats; its worlds may be placed elsewhere.
    pub server_timeout_ms: u64,
    /// A placement its server has not reported for this long (and without live reservations) is
    /// forgotten: the world was unloaded, or its bots never came.
    pub placement_grace_ms: u64,
    /// A bot's seat is remembered this long after its server last listed it.
    pub seat_ttl_ms: u64,
    /// A world's last fence is remembered this long after its last placement (longer than any
    /// server keeps a world it lost contact about).
    pub lastfence_ttl_ms: u64,
    /// How far ahead of the registry's clock a reported fence may be, in microseconds.
    pub fence_ahead_us: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            server_timeout_ms: 5_000,
            placement_grace_ms: 20_000,
            seat_ttl_ms: 60_000,
            lastfence_ttl_ms: 3_600_000,
            fence_ahead_us: 86_400_000_000,
        }
    }
}

impl Timing {
    /// The safety margin between a server's lease and the server timeout: a fifth of the
    /// timeout (for clock rate drift and for the server noticing its lease ran out), at least
    /// 250 ms.
    pub fn lease_margin_ms(&self) -> u64 {
        (self.server_timeout_ms / 5).max(250)
    }

    /// How long a heartbeat's answer lets its server serve, counted from when it sent it.
    pub fn lease_ms(&self) -> u64 {
        self.server_timeout_ms.saturating_sub(self.lease_margin_ms()).max(1)
    }

    /// How long a registry that started empty waits before placing named worlds.
    pub fn warmup_ms(&self) -> u64 {
        self.server_timeout_ms
    }
}

/// The in-memory registry's clock (Redis has its own).
pub trait RegistryClock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Microseconds since the Unix epoch.
    fn now_us(&self) -> u64 {
        self.now_ms() * 1000
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl RegistryClock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
    fn now_us(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(ms)))
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl RegistryClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The Lua prelude every Redis script starts with (helpers and the registry's time).
pub const LUA_PRELUDE: &str = include_str!("lua/common.lua");

/// The Redis key of a world's reservations (for tests and tools).
pub fn reservations_key(prefix: &str, world: &str) -> String {
    format!("{prefix}:res:{world}")
}

/// The Redis key of a bot's seat.
pub fn bot_seat_key(prefix: &str, bot: &str) -> String {
    format!("{prefix}:botseat:{bot}")
}

/// The Redis key of a world's last fence.
pub fn lastfence_key(prefix: &str, world: &str) -> String {
    format!("{prefix}:lastfence:{world}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_ends_before_the_timeout_with_a_margin() {
        let t = Timing::default();
        assert_eq!((t.lease_ms(), t.lease_margin_ms()), (4_000, 1_000));
        let short = Timing { server_timeout_ms: 1_000, ..t };
        assert_eq!((short.lease_ms(), short.lease_margin_ms()), (750, 250));
    }
}
