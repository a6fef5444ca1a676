//! # arena-service
//!
//! What every Arena process that serves something shares, so that each does it the same way:
//!
//! - [`http`]: an HTTP/1.1 server that cannot be exhausted — a cap on open connections taken
//!   before `accept`, a deadline on request heads and bodies, bounded heads, and a JSON body on
//!   every refusal, including the ones the HTTP layer makes by itself;
//! - [`supervisor`]: tasks that run under one cancellation token; a task that panics (or a
//!   critical one that stops) marks the process failed and shuts it down;
//! - [`ready`]: the ready file a process writes once it serves (its bound addresses), so that
//!   whoever started it learns its ports without guessing free ones;
//! - [`signal`]: SIGTERM or Ctrl-C as a future;
//! - [`svg`]: the frame of a chart panel, for the reports' SVG charts.

pub mod http;
pub mod ready;
pub mod signal;
pub mod supervisor;
pub mod svg;
