//! The WebSocket transport: handshake, per-connection reader tasks, and direct socket writes.

pub mod conn;
pub mod connection;
pub mod frame;
pub mod handshake;
pub mod listener;
