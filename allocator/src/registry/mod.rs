//! Where gameservers, world placements and seat reservations are kept.
//!
//! Two implementations with one contract: [`memory::MemoryRegistry`] (the embedded default for a
//! single allocator process) and [`redis::RedisRegistry`] (shared by any number of allocator
//! replicas; every change is one Lua script, so it is atomic). The same conformance tests run
//! against both (`tests/registry_contract.rs`).
//!
//! The rules both apply:
//! - A heartbeat records the server (alive until `server_timeout_ms` passes without another),
//!   the occupancy of each world it reports, and consumes the reservations its bots used to join.
//!   A reported world that is placed on another server is to be evicted; one the registry does
//!   not know is adopted (placed there with a new fence) — unless the fence the server holds is
//!   older than the world's last placement: that copy is stale and evicted. Fences only grow:
//!   reported fences raise the counter. A world placed on the server that it
//!   has not reported for `placement_grace_ms`, with no live reservation, is forgotten — at once
//!   when the server is draining (it saved the world and let it go).
//! - A reservation takes a seat only if the server is alive and ready, the world is (still)
//!   placed there with the expected fence, and `occupancy + live reservations < capacity`.
//!   Placing a world takes a new fence from a counter that only grows, and is refused while the
//!   world is live on another server or the server holds its maximum of worlds.

pub mod memory;
pub mod redis;

use std::future::Future;

use arena_sdk::allocator_api::{Heartbeat, HeartbeatReply};

use crate::snapshot::{Snapshot, WorldView};

/// Timing rules of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A server not heard from for this long gets no new seats; its worlds may be placed elsewhere.
    pub server_timeout_ms: u64,
    /// A placement its server has not reported for this long (and without live reservations) is
    /// forgotten: the world was unloaded, or its bots never came.
    pub placement_grace_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { server_timeout_ms: 5_000, placement_grace_ms: 20_000 }
    }
}

/// How to reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveKind {
    /// In a world placed on the server with this fence.
    Seat { fence: u64 },
    /// Place the world on the server (if it is not live elsewhere), then reserve. Idempotent: a
    /// world already placed on that server just gets the seat, so concurrent requests may all
    /// ask to place the same new world.
    Place,
}

/// One seat reservation.
#[derive(Debug, Clone, Copy)]
pub struct Reserve<'a> {
    pub world: &'a str,
    pub server: &'a str,
    pub kind: ReserveKind,
    /// Unique id of the reservation (the ticket's nonce).
    pub id: &'a str,
    pub now_ms: u64,
    pub expires_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    Ok {
        fence: u64,
        /// Seats used in the world, this one included.
        used: u32,
    },
    Conflict(Conflict),
}

/// Why a reservation was refused; the allocator retries elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// The server is gone, draining, or not registered.
    ServerUnavailable,
    /// The server holds its maximum of worlds.
    ServerFull,
    WorldFull,
    /// The world is no longer placed there with that fence.
    WorldMoved,
    /// The world to place is live on another server.
    LiveElsewhere {
        server: String,
        fence: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("registry answered something unexpected: {0}")]
    Protocol(String),
}

/// The registry contract.
pub trait Registry: Send + Sync + 'static {
    fn heartbeat(
        &self,
        hb: &Heartbeat,
        now_ms: u64,
    ) -> impl Future<Output = Result<HeartbeatReply, RegistryError>> + Send;

    fn reserve(&self, r: &Reserve<'_>) -> impl Future<Output = Result<Reserved, RegistryError>> + Send;

    /// Cancel a reservation; false when there was none.
    fn release(&self, world: &str, id: &str) -> impl Future<Output = Result<bool, RegistryError>> + Send;

    /// Every server, its number of worlds, and the worlds with a free seat.
    fn snapshot(&self, now_ms: u64) -> impl Future<Output = Result<Snapshot, RegistryError>> + Send;

    /// Where `world` is placed now, with its seats in use.
    fn locate(&self, world: &str, now_ms: u64)
    -> impl Future<Output = Result<Option<WorldView>, RegistryError>> + Send;

    /// Forget servers not heard from since `before_ms`, and the placements they held.
    fn purge(&self, before_ms: u64) -> impl Future<Output = Result<usize, RegistryError>> + Send;

    /// Whether the registry answers.
    fn ping(&self) -> impl Future<Output = Result<(), RegistryError>> + Send;
}
