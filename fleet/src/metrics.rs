//! The fleet's Prometheus metrics (`GET /metrics`), all under `arena_fleet_`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
pub struct Metrics {
    /// Servers wanted, by region.
    pub desired: Family<Labels, Gauge>,
    /// The bounds of the region's spec (a schedule window may narrow them): pinned at max is an alert.
    pub max_servers: Family<Labels, Gauge>,
    pub min_servers: Family<Labels, Gauge>,
    /// Servers, by region and phase (starting, running, draining).
    pub servers: Family<Labels, Gauge>,
    pub seats_used: Family<Labels, Gauge>,
    pub seats: Family<Labels, Gauge>,
    /// Scaling decisions that changed the count, by region, direction and policy.
    pub scaling_events: Family<Labels, Counter>,
    /// Servers that exited unasked or hung, by region.
    pub crashes: Family<Labels, Counter>,
    /// Reads of the allocator's view that failed.
    pub allocator_errors: Counter,
    /// Seconds from a scale-up decision to the new server's first seat.
    pub scale_up_seconds: Histogram,
    /// Kubernetes operator: 1 while this replica holds the lease and acts.
    pub leader: Gauge,
    /// Kubernetes operator: reconciliations that failed (retried).
    pub reconcile_errors: Counter,
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            desired: Family::default(),
            max_servers: Family::default(),
            min_servers: Family::default(),
            servers: Family::default(),
            seats_used: Family::default(),
            seats: Family::default(),
            scaling_events: Family::default(),
            crashes: Family::default(),
            allocator_errors: Counter::default(),
            scale_up_seconds: Histogram::new([0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0]),
            leader: Gauge::default(),
            reconcile_errors: Counter::default(),
            registry: Registry::with_prefix("arena_fleet"),
        };
        let r = &mut m.registry;
        r.register("desired_servers", "Servers wanted by the autoscaling policy", m.desired.clone());
        r.register("max_servers", "maxServers of the region's spec", m.max_servers.clone());
        r.register("min_servers", "minServers of the region's spec", m.min_servers.clone());
        r.register("leader", "1 while this operator replica holds the lease and acts", m.leader.clone());
        r.register("reconcile_errors", "Reconciliations that failed and are retried", m.reconcile_errors.clone());
        r.register("servers", "Servers by phase (starting, running, draining)", m.servers.clone());
        r.register("seats_used", "Seats occupied or reserved", m.seats_used.clone());
        r.register("seats", "Seats of the servers that take bots", m.seats.clone());
        r.register("scaling_events", "Scaling decisions that changed the count", m.scaling_events.clone());
        r.register("crashes", "Servers that exited unasked or hung", m.crashes.clone());
        r.register("allocator_errors", "Reads of the allocator's view that failed", m.allocator_errors.clone());
        r.register(
            "scale_up_seconds",
            "Seconds from a scale-up decision to the new server's first seat",
            m.scale_up_seconds.clone(),
        );
        m
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Labels for a region.
pub fn region(name: &str) -> Labels {
    vec![("region", name.to_owned())]
}
