//! Prometheus metrics of an allocator replica.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::snapshot::{Index, Liveness};

type Labels = [(&'static str, &'static str); 1];

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Allocation requests by result (`ok`, `no_capacity`, `bad_request`, `unauthorized`, …).
    pub allocations: Family<Labels, Counter>,
    pub allocation_duration: Histogram,
    /// Reservations the registry refused, by reason (each one is retried).
    pub conflicts: Family<Labels, Counter>,
    pub heartbeats: Counter,
    pub registry_errors: Counter,
    /// Allocations that gave a bot back the seat it held.
    pub held_seats: Counter,
    /// Open HTTP connections.
    pub http_connections: Gauge,
    /// Age of this replica's view of the registry, in seconds.
    pub index_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub servers_ready: Gauge,
    pub worlds: Gauge,
    /// Seats used (occupied + reserved) and seats available on ready servers.
    pub seats_used: Gauge,
    pub seats_total: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("arena_allocator");
        let m = Metrics {
            allocations: Family::default(),
            // 0.1 ms … 1 s
            allocation_duration: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            conflicts: Family::default(),
            heartbeats: Counter::default(),
            registry_errors: Counter::default(),
            held_seats: Counter::default(),
            http_connections: Gauge::default(),
            index_age_seconds: Gauge::default(),
            servers_ready: Gauge::default(),
            worlds: Gauge::default(),
            seats_used: Gauge::default(),
            seats_total: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("allocations", "Allocation requests by result", m.allocations.clone());
        r.register(
            "allocation_duration_seconds",
            "Time to answer an allocation request",
            m.allocation_duration.clone(),
        );
        r.register("reservation_conflicts", "Reservations refused by the registry and retried", m.conflicts.clone());
        r.register("heartbeats", "Gameserver heartbeats recorded", m.heartbeats.clone());
        r.register("registry_errors", "Registry operations that failed or timed out", m.registry_errors.clone());
        r.register("held_seats", "Allocations that gave a bot back the seat it held", m.held_seats.clone());
        r.register("http_connections", "Open HTTP connections", m.http_connections.clone());
        r.register("index_age_seconds", "Age of this replica's view of the registry", m.index_age_seconds.clone());
        r.register("servers_ready", "Gameservers alive and ready", m.servers_ready.clone());
        r.register("worlds", "Worlds placed", m.worlds.clone());
        r.register("seats_used", "Seats occupied or reserved", m.seats_used.clone());
        r.register("seats_total", "Seats on ready gameservers (placed or placeable worlds)", m.seats_total.clone());
        Metrics { registry, ..m }
    }

    pub fn count(family: &Family<Labels, Counter>, label: &'static str, value: &'static str) {
        family.get_or_create(&[(label, value)]).inc();
    }

    /// Refresh the gauges from a fresh index.
    pub fn observe_index(&self, index: &Index, l: Liveness) {
        let ready: Vec<_> = index.servers().filter(|s| s.view.ready(l)).collect();
        self.servers_ready.set(ready.len() as i64);
        self.worlds.set(index.worlds().count() as i64);
        self.seats_used.set(index.servers().map(|s| i64::from(s.bots)).sum());
        self.seats_total
            .set(ready.iter().map(|s| i64::from(s.view.max_worlds) * i64::from(s.view.world_capacity)).sum());
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = encode(&mut out, &self.registry);
        out
    }
}
