//! # arena-testkit
//!
//! What Arena's integration suites share, so each test reads as what it checks:
//!
//! - [`process`]: the workspace's binaries as child processes on port 0 — each writes a ready
//!   file with the addresses it bound, so no test ever guesses a free port (and races another
//!   for it); signals, logs, kill on drop;
//! - [`proxy`]: a TCP proxy that can pass, black-hole or refuse traffic and cut connections —
//!   partitions without sleeps or iptables;
//! - [`stores`]: a fresh database on the shared PostgreSQL (migrated), a fresh key prefix on the
//!   shared Redis, a throwaway PostgreSQL server a test may stop. A store that cannot be reached
//!   fails the test; nothing is skipped;
//! - [`certs`]: a self-signed certificate as PEM files and the roots that trust it;
//! - [`http`]: small JSON helpers and waiting on a condition with a deadline;
//! - [`layering`]: the module graph of a crate, and its cycles.

pub mod certs;
pub mod http;
pub mod layering;
pub mod process;
pub mod proxy;
pub mod stores;

/// The development key both services accept on loopback.
pub const DEV_KEY: &str = "arena-dev-key";
