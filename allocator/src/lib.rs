//! # arena-allocator
//!
//! Answers "where does this bot play?". Gameservers report to it every second; bots ask it for a
//! seat and get a world, a server endpoint and a signed join ticket. Replicas are stateless over
//! a shared registry (Redis) or, alone, keep the registry in memory.
//!
//! - [`snapshot`]: the registry's state and the index decisions are made on;
//! - [`policy`]: placement and seat choice, pure functions of the request and the index;
//! - [`registry`]: the in-memory and Redis registries (atomic reservations);
//! - [`service`]: the allocation flow — decide, reserve, retry, sign;
//! - [`api`], [`auth`], [`ratelimit`]: the HTTP API, API keys and request limits;
//! - [`server`](crate::server): wiring.

pub mod api;
pub mod auth;
pub mod metrics;
pub mod policy;
pub mod ratelimit;
pub mod registry;
pub mod server;
pub mod service;
pub mod snapshot;

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
