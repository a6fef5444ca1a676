//! Where the shell reads time. The cores (world, room, session, tick, lease, load, tickets)
//! never do: they take `now` as a parameter, so tests drive them on virtual time.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A monotonic clock counting from a fixed origin (the process start): the clock of rate
/// limits, leases and tick budgets, which must not jump when the wall clock is set.
#[derive(Debug, Clone, Copy)]
pub struct Monotonic {
    origin: Instant,
}

impl Default for Monotonic {
    fn default() -> Self {
        Self::new()
    }
}

impl Monotonic {
    pub fn new() -> Self {
        Monotonic { origin: Instant::now() }
    }

    /// Time since the origin.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// The time since the origin of `at`.
    pub fn at(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.origin)
    }
}
