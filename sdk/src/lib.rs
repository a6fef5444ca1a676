//! # arena-sdk
//!
//! Everything a program needs to speak Arena's wire protocol (`arena.v1`):
//!
//! - [`protocol`]: the messages, their limits, error and close codes;
//! - [`codec`]: the MessagePack and JSON encodings, and the once-per-tick update encoder the
//!   gameserver uses;
//! - [`ticket`]: signed join tickets (minted by the allocator, checked by the gameserver);
//! - [`allocator_api`]: the allocator's HTTP API types (allocations, gameserver heartbeats);
//! - [`limit`]: a token bucket with time passed in;
//! - [`mirror`]: a sans-IO client session that keeps a local copy of a world;
//! - [`rng`]: the seeded generator behind the worlds' randomness and clients' jitter;
//! - [`client`] (feature `client`): an async WebSocket client built on tokio-tungstenite;
//! - [`bot`] (feature `client`): a bot that allocates, joins, and resumes or reallocates by itself.
//!
//! `docs/protocol.md` describes the same protocol for clients in other languages.

pub mod allocator_api;
pub mod codec;
pub mod limit;
pub mod mirror;
pub mod protocol;
pub mod rng;
pub mod ticket;

#[cfg(feature = "client")]
pub mod bot;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "quic")]
pub mod quic;

pub use codec::Encoding;
