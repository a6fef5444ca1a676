//! Where gameservers, world placements, seats and reservations are kept.
//!
//! Two implementations with one contract: [`memory::MemoryRegistry`] (the embedded default for a
//! single allocator process) and [`redis::RedisRegistry`] (shared by any number of allocator
//! replicas; every change is one Lua script, so it is atomic). The same conformance tests run
//! against both (`tests/registry_contract.rs`). [`schema`] owns the layout and the rules of time.
//!
//! The rules both apply — all with the registry's own clock, never a caller's:
//! - A heartbeat records the server (alive until `server_timeout_ms` passes without another, or
//!   since the registry came back from a blackout), the occupancy of each world it reports, the
//!   bots holding its seats (when it lists them), and consumes the reservations its bots used to
//!   join or that it refused. A reported world placed on another server is to be evicted; one
//!   the registry does not know is adopted (placed there with a new fence) — unless the fence
//!   the server holds is older than the world's last placement: that copy is stale. A fence
//!   ahead of the registry's clock is refused. A world placed on the server that it has not
//!   reported for `placement_grace_ms`, with no live reservation, is forgotten — at once when
//!   the server is draining (it saved the world and let it go). The answer lists the fences of
//!   the reported worlds, the worlds placed there it did not report, the newest fence, and the
//!   lease.
//! - One seat per bot: a reservation for a bot that holds a seat or a live reservation answers
//!   that seat instead ([`Reserved::Held`]); for another world than the one it holds a seat in,
//!   [`Conflict::SeatElsewhere`]. A held seat needs no capacity: its world is placed, if need
//!   be, without counting it.
//! - A new reservation takes a seat only if the server is alive and ready, the world is (still)
//!   placed there with the expected fence, and `occupancy + live reservations < capacity`.
//!   Placing a world takes a new fence (larger than every earlier one and than the registry's
//!   clock in microseconds), and is refused while the world is live on another server, the
//!   server holds its maximum of worlds or — for a world named by the request — while the
//!   registry is warming up after it started empty.

pub mod memory;
pub mod redis;
pub mod schema;

use std::future::Future;

use arena_sdk::allocator_api::{Heartbeat, HeartbeatReply};

use crate::snapshot::{Snapshot, WorldView};

pub use schema::Timing;

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
    /// The bot the seat is for.
    pub bot: &'a str,
    /// The world the request named, if it named one.
    pub requested: Option<&'a str>,
    /// How long the reservation lives.
    pub ttl_ms: u64,
    /// Registry time past which the caller has given up: nothing is reserved then.
    pub deadline_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// A new reservation.
    Ok {
        fence: u64,
        /// Seats used in the world, this one included.
        used: u32,
    },
    /// The bot holds a seat (or a live reservation) in this world already: go there.
    Held {
        world: String,
        server: String,
        fence: u64,
    },
    Conflict(Conflict),
}

/// Why a reservation was refused; the allocator retries elsewhere or answers.
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
    /// The bot holds a seat in this world, which is not live anywhere: place it.
    HeldUnplaced {
        world: String,
    },
    /// The bot holds a seat in another world than the one requested.
    SeatElsewhere {
        world: String,
    },
    /// The bot's world is live on a server that is draining.
    Moving,
    /// The registry started empty a moment ago and does not place named worlds yet.
    WarmingUp,
    /// The server looks gone, but the registry has heard from no server lately (it was out of
    /// reach itself): nothing is judged dead until they report again.
    Unheard,
    /// The call reached the registry after its deadline: nothing was done.
    Late,
}

/// Where a world is and what a bot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Located {
    pub world: Option<WorldView>,
    /// The world the bot holds a seat in.
    pub seat: Option<String>,
    /// The world of the bot's live reservation.
    pub reservation: Option<String>,
}

impl Located {
    /// The world the bot holds a seat or (else) a live reservation in.
    pub fn holds(&self) -> Option<&str> {
        self.seat.as_deref().or(self.reservation.as_deref())
    }

    pub fn holds_owned(self) -> Option<String> {
        self.seat.or(self.reservation)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("registry answered something unexpected: {0}")]
    Protocol(String),
    #[error("registry did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The heartbeat reports a fence ahead of the registry's clock.
    #[error("world {0}: fence ahead of the registry's clock")]
    FenceAhead(String),
}

/// The registry contract.
pub trait Registry: Send + Sync + 'static {
    fn heartbeat(&self, hb: &Heartbeat) -> impl Future<Output = Result<HeartbeatReply, RegistryError>> + Send;

    fn reserve(&self, r: &Reserve<'_>) -> impl Future<Output = Result<Reserved, RegistryError>> + Send;

    /// Cancel a reservation; false when there was none.
    fn release(&self, world: &str, bot: &str, id: &str) -> impl Future<Output = Result<bool, RegistryError>> + Send;

    /// The registry's time, every server, its number of worlds, and the worlds with a free seat.
    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, RegistryError>> + Send;

    /// Where `world` is placed now, with its seats in use, and where `bot` holds a seat.
    fn locate(
        &self,
        world: Option<&str>,
        bot: Option<&str>,
    ) -> impl Future<Output = Result<Located, RegistryError>> + Send;

    /// Forget servers silent for `silence_ms`, and the placements they held.
    fn purge(&self, silence_ms: u64) -> impl Future<Output = Result<usize, RegistryError>> + Send;

    /// Whether the registry answers.
    fn ping(&self) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// The timing rules it applies.
    fn timing(&self) -> Timing;
}
