//! Per-key and per-IP request limits (token buckets), with bounded tables.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use arena_sdk::limit::TokenBucket;
use parking_lot::Mutex;

/// One limit: sustained rate and burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitConfig {
    pub per_key: Rate,
    pub per_ip: Rate,
    /// Most keys or addresses tracked at once; idle ones are forgotten first.
    pub max_tracked: usize,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            per_key: Rate { per_sec: 20_000.0, burst: 40_000.0 },
            per_ip: Rate { per_sec: 20_000.0, burst: 40_000.0 },
            max_tracked: 100_000,
        }
    }
}

#[derive(Debug)]
struct Table<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Hash + Eq> Table<K> {
    fn new(rate: Rate) -> Self {
        Table { rate, buckets: Mutex::new(HashMap::new()) }
    }

    /// Take a token for `key`; on refusal, how long until one is back.
    fn take(&self, key: K, now: Duration, max: usize) -> Result<(), Duration> {
        let mut b = self.buckets.lock();
        if !b.contains_key(&key) && b.len() >= max {
            // Forget idle entries (full buckets); if all are busy, refuse newcomers.
            b.retain(|_, bucket| bucket.available(now) < self.rate.burst);
            if b.len() >= max {
                return Err(Duration::from_secs(1));
            }
        }
        let bucket = b.entry(key).or_insert_with(|| TokenBucket::new(self.rate.burst, self.rate.per_sec, now));
        if bucket.try_take(now) { Ok(()) } else { Err(Duration::from_secs_f64(1.0 / self.rate.per_sec.max(1e-3))) }
    }
}

#[derive(Debug)]
pub struct Limiter {
    cfg: LimitConfig,
    keys: Table<String>,
    ips: Table<IpAddr>,
    epoch: Instant,
}

impl Limiter {
    pub fn new(cfg: LimitConfig) -> Self {
        Limiter { keys: Table::new(cfg.per_key), ips: Table::new(cfg.per_ip), cfg, epoch: Instant::now() }
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        self.ips.take(ip, self.epoch.elapsed(), self.cfg.max_tracked)
    }

    pub fn check_key(&self, key: &str) -> Result<(), Duration> {
        self.keys.take(key.to_owned(), self.epoch.elapsed(), self.cfg.max_tracked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_limit_and_stay_bounded() {
        let t = Table::new(Rate { per_sec: 1.0, burst: 2.0 });
        let now = Duration::ZERO;
        assert!(t.take("a", now, 2).is_ok());
        assert!(t.take("a", now, 2).is_ok());
        assert_eq!(t.take("a", now, 2), Err(Duration::from_secs(1)));
        assert!(t.take("b", now, 2).is_ok());
        // Table full of busy keys: a newcomer waits.
        assert!(t.take("c", now, 2).is_err());
        // Later, idle keys are forgotten to make room.
        assert!(t.take("c", Duration::from_secs(10), 2).is_ok());
        assert!(t.buckets.lock().len() <= 2);
    }
}
