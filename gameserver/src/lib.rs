//! # arena-gameserver
//!
//! The world server. Layers, from the inside out:
//!
//! - [`world`]: the deterministic arena game (no clock, no I/O, seeded randomness);
//! - [`room`]: a world with its seats — who holds which bot, grace periods, resume tokens,
//!   lagging clients — still without I/O;
//! - [`session`]: one connection's protocol state (limits, sequence numbers, violations);
//! - [`host`]: all worlds of the process, the fixed tick, joins and resumes;
//! - [`ws`]: the WebSocket transport; [`http`]: health, readiness and metrics;
//! - [`persist`]: activity log and world snapshots (PostgreSQL, Redis);
//! - [`heartbeat`]: reporting to the allocator;
//! - [`server`]: wiring and the graceful drain.

pub mod config;
pub mod heartbeat;
pub mod host;
pub mod http;
pub mod metrics;
pub mod persist;
pub mod room;
pub mod server;
pub mod session;
pub mod world;
pub mod ws;

pub use config::ServerConfig;
pub use server::Server;
