//! # arena-gameserver
//!
//! The world server. Layers, from the inside out — each one a file, each depending only on the
//! ones before it:
//!
//! - the cores, without I/O or clocks: [`world`] (the deterministic arena game), [`room`] (a
//!   world with its seats: joins, grace, resume, lag, event history), [`session`] (one
//!   connection's protocol state and limits), [`tick`] (one world's tick and fan-out),
//!   [`tickets`], [`lease`], [`load`] (the tick budget), [`placement`] (what the allocator
//!   placed here, what to tell it);
//! - [`link`]: what the worlds need from a connection, whatever its transport;
//! - [`worlds`]: the world map and shards, seating, suspension, eviction — generic over the
//!   link, so the simulation harness drives the same code;
//! - [`host`]: the server's state and the flows across it (join, resume, lifecycle), with
//!   [`admission`], [`loading`], [`saving`], [`activity_hooks`] and [`persist`];
//! - the shell: [`ws`] (the WebSocket transport), [`heartbeat`] (reporting to the allocator),
//!   [`http`] (health, readiness, metrics), [`server`] (wiring and the drain), [`config`],
//!   [`clock`], [`metrics`].
//!
//! `docs/design-notes.md` follows one input from the socket to the client's update through
//! these files.

pub mod activity_hooks;
pub mod admission;
pub mod certificate;
pub mod clock;
pub mod config;
pub mod fuzzing;
pub mod heartbeat;
pub mod host;
pub mod http;
pub mod lease;
pub mod link;
pub mod load;
pub mod loading;
pub mod metrics;
pub mod persist;
pub mod placement;
pub mod quic;
pub mod room;
pub mod saving;
pub mod server;
pub mod serving;
pub mod session;
pub mod tick;
pub mod tickets;
pub mod world;
pub mod worlds;
pub mod ws;

pub use config::ServerConfig;
pub use server::Server;
