//! What the swarm measures: HDR histograms (microseconds), counters, errors by kind.
//!
//! Bots do not touch the shared histograms per sample: each keeps a small [`Samples`] batch and
//! flushes it about once a second, so 10,000 bots cost a few thousand lock acquisitions a second
//! rather than hundreds of thousands.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// 1 µs to 5 minutes at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 300_000_000, 3).unwrap_or_else(|e| unreachable!("valid bounds: {e}"))
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

#[derive(Debug, Clone)]
pub struct Hists {
    pub join_alloc: Histogram<u64>,
    pub join_connect: Histogram<u64>,
    pub join_welcome: Histogram<u64>,
    pub join_total: Histogram<u64>,
    pub input_ack: Histogram<u64>,
    pub interarrival: Histogram<u64>,
    /// Input → ack since the last progress tick (for the live line and the timeline).
    pub window_input_ack: Histogram<u64>,
}

impl Default for Hists {
    fn default() -> Self {
        Hists {
            join_alloc: histogram(),
            join_connect: histogram(),
            join_welcome: histogram(),
            join_total: histogram(),
            input_ack: histogram(),
            interarrival: histogram(),
            window_input_ack: histogram(),
        }
    }
}

/// The phases of one join.
#[derive(Debug, Clone, Copy)]
pub struct JoinTimes {
    pub alloc: Duration,
    pub connect: Duration,
    pub welcome: Duration,
}

/// A bot's unflushed samples.
#[derive(Debug, Default)]
pub struct Samples {
    input_ack: Vec<u64>,
    interarrival: Vec<u64>,
    updates: u64,
    bytes_in: u64,
    inputs: u64,
    bytes_out: u64,
    gaps: u64,
}

impl Samples {
    pub fn input_ack(&mut self, d: Duration) {
        self.input_ack.push(us(d));
    }
    pub fn update(&mut self, bytes: usize, interarrival: Option<Duration>) {
        self.updates += 1;
        self.bytes_in += bytes as u64;
        if let Some(d) = interarrival {
            self.interarrival.push(us(d));
        }
    }
    pub fn other_message(&mut self, bytes: usize) {
        self.bytes_in += bytes as u64;
    }
    pub fn sent(&mut self, bytes: usize) {
        self.inputs += 1;
        self.bytes_out += bytes as u64;
    }
    pub fn gap(&mut self) {
        self.gaps += 1;
    }
    pub fn is_large(&self) -> bool {
        self.interarrival.len() >= 64
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    hists: Mutex<Hists>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Bots that gave up because the fleet refused them, by its last answer.
    refused: Mutex<BTreeMap<String, u64>>,
    /// Bots currently in a world.
    pub joined: AtomicI64,
    /// Bots that joined at least once.
    pub ever_joined: AtomicU64,
    pub updates: AtomicU64,
    pub bytes_in: AtomicU64,
    pub inputs: AtomicU64,
    pub bytes_out: AtomicU64,
    pub gaps: AtomicU64,
    pub disconnects: AtomicU64,
    pub reconnects: AtomicU64,
    /// Connections the server closed because the bot's world moved (drain, re-placement).
    pub moved: AtomicU64,
    /// Bots that, allocated again after losing their connection, got their own seat back (the
    /// same bot id), or a new one.
    pub seats_kept: AtomicU64,
    pub seats_lost: AtomicU64,
    /// Inputs never acknowledged (the bot's pending list overflowed or the seat was lost).
    pub unacked: AtomicU64,
}

impl Stats {
    pub fn error(&self, kind: impl Into<String>) {
        *self.errors.lock().entry(kind.into()).or_default() += 1;
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().clone()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.lock().values().sum()
    }

    pub fn refused(&self, kind: impl Into<String>) {
        *self.refused.lock().entry(kind.into()).or_default() += 1;
    }

    pub fn refusals(&self) -> BTreeMap<String, u64> {
        self.refused.lock().clone()
    }

    pub fn joined(&self, t: JoinTimes) {
        let mut h = self.hists.lock();
        let _ = h.join_alloc.record(us(t.alloc));
        let _ = h.join_connect.record(us(t.connect));
        let _ = h.join_welcome.record(us(t.welcome));
        let _ = h.join_total.record(us(t.alloc + t.connect + t.welcome));
        drop(h);
        self.joined.fetch_add(1, Ordering::Relaxed);
    }

    pub fn flush(&self, s: &mut Samples) {
        {
            let mut h = self.hists.lock();
            for v in s.input_ack.drain(..) {
                let _ = h.input_ack.record(v);
                let _ = h.window_input_ack.record(v);
            }
            for v in s.interarrival.drain(..) {
                let _ = h.interarrival.record(v);
            }
        }
        self.updates.fetch_add(std::mem::take(&mut s.updates), Ordering::Relaxed);
        self.bytes_in.fetch_add(std::mem::take(&mut s.bytes_in), Ordering::Relaxed);
        self.inputs.fetch_add(std::mem::take(&mut s.inputs), Ordering::Relaxed);
        self.bytes_out.fetch_add(std::mem::take(&mut s.bytes_out), Ordering::Relaxed);
        self.gaps.fetch_add(std::mem::take(&mut s.gaps), Ordering::Relaxed);
    }

    /// A copy of the histograms; resets the window.
    pub fn take_window(&self) -> Hists {
        let mut h = self.hists.lock();
        let copy = h.clone();
        h.window_input_ack.reset();
        copy
    }

    pub fn hists(&self) -> Hists {
        self.hists.lock().clone()
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles { count: 0, p50: 0.0, p95: 0.0, p99: 0.0, max: 0.0 };
        }
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_flush_into_histograms() {
        let stats = Stats::default();
        let mut s = Samples::default();
        for ms in 1..=100 {
            s.input_ack(Duration::from_millis(ms));
        }
        s.update(100, Some(Duration::from_millis(50)));
        stats.flush(&mut s);
        let p = Percentiles::of(&stats.hists().input_ack);
        assert_eq!(p.count, 100);
        assert!((p.p50 - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99 - 99.0).abs() < 0.1, "{p:?}");
        assert_eq!(stats.updates.load(Ordering::Relaxed), 1);
        let w = stats.take_window();
        assert_eq!(w.window_input_ack.len(), 100);
        assert_eq!(stats.take_window().window_input_ack.len(), 0, "the window resets");
    }
}
