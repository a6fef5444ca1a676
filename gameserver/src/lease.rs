//! The lease under which a gameserver serves its worlds.
//!
//! Every acknowledged heartbeat renews it for `lease_ms` (the allocator's answer) counted from
//! the moment that heartbeat was *sent*. The allocator moves a world off a server only after it
//! has not heard from it for its server timeout, counted from when it *received* the last
//! heartbeat, and `lease_ms` is shorter than that timeout by a safety margin. So the lease runs
//! out on the server — which then stops serving and admitting — strictly before the allocator
//! may place its worlds elsewhere, and no world is served by two servers at once. A server
//! without an allocator (standalone) holds a lease that never ends; one with an allocator holds
//! none until its first heartbeat is acknowledged.
//!
//! Time is monotonic time since the process started, passed in.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// No allocator: worlds are always served.
    Standalone,
    /// Valid until this instant (none yet: not granted).
    Until(Option<Duration>),
}

impl Lease {
    /// The lease of a server that reports to an allocator, before its first acknowledged heartbeat.
    pub fn pending() -> Self {
        Lease::Until(None)
    }

    /// A heartbeat sent at `sent_at` was acknowledged with a lease of `lease`.
    pub fn renew(&mut self, sent_at: Duration, lease: Duration) {
        if let Lease::Until(until) = self {
            let new = sent_at + lease;
            *until = Some(until.map_or(new, |u| u.max(new)));
        }
    }

    pub fn valid(&self, now: Duration) -> bool {
        match self {
            Lease::Standalone => true,
            Lease::Until(until) => until.is_some_and(|u| now < u),
        }
    }

    /// Time left, if the lease is bounded and granted.
    pub fn remaining(&self, now: Duration) -> Option<Duration> {
        match self {
            Lease::Standalone => None,
            Lease::Until(until) => Some(until.map_or(Duration::ZERO, |u| u.saturating_sub(now))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn renewals_extend_from_the_send_time_and_never_shorten() {
        let mut l = Lease::pending();
        assert!(!l.valid(Duration::ZERO), "nothing is served before the first acknowledged heartbeat");
        l.renew(10 * S, 4 * S);
        assert!(l.valid(13 * S) && !l.valid(14 * S), "from the send time, not the answer's");
        // A late answer to an older heartbeat does not shorten a newer lease.
        l.renew(12 * S, 4 * S);
        l.renew(11 * S, 4 * S);
        assert!(l.valid(15 * S) && !l.valid(16 * S));
        assert_eq!(l.remaining(15 * S), Some(S));
        assert!(Lease::Standalone.valid(Duration::MAX));
    }
}
