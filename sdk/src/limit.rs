//! A token bucket with time passed in: the gameserver's per-connection rate and violation
//! limits, the allocator's per-key and per-IP request limits.

use std::time::Duration;

/// Holds up to `capacity` tokens and refills `rate` tokens per second.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket at time `now`.
    pub fn new(capacity: f64, rate: f64, now: Duration) -> Self {
        TokenBucket { capacity, rate, tokens: capacity, last: now }
    }

    fn refill(&mut self, now: Duration) {
        // Time never runs backwards here even if a caller's clock does.
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
    }

    /// Take one token if there is one.
    pub fn try_take(&mut self, now: Duration) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Tokens available at `now`.
    pub fn available(&mut self, now: Duration) -> f64 {
        self.refill(now);
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn burst_then_rate() {
        let mut b = TokenBucket::new(3.0, 10.0, Duration::ZERO);
        assert!((0..3).all(|_| b.try_take(Duration::ZERO)));
        assert!(!b.try_take(Duration::ZERO));
        assert!(!b.try_take(MS * 99));
        assert!(b.try_take(MS * 100));
        assert!(!b.try_take(MS * 100));
        // A long pause refills to capacity, not beyond.
        assert_eq!(b.available(Duration::from_secs(100)), 3.0);
    }

    #[test]
    fn clock_going_backwards_does_not_mint_tokens() {
        let mut b = TokenBucket::new(1.0, 1.0, Duration::from_secs(10));
        assert!(b.try_take(Duration::from_secs(10)));
        assert!(!b.try_take(Duration::from_secs(5)));
        assert!(!b.try_take(Duration::from_millis(10_500)));
        assert!(b.try_take(Duration::from_secs(11)));
    }
}
