//! Prometheus metrics of a gameserver.
//!
//! Counters on hot paths are bumped once per tick per shard (the tick loop sums locally), never
//! once per client write. Labels come from static names only.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];
/// A gauge holding a float (ratios, seconds).
pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections (joined or not).
    pub connections: Gauge,
    /// Connections waiting to join (handshaking or awaiting `join`).
    pub connections_pending: Gauge,
    /// Connections answered 503 at once, by reason (`pending_full`, `pending_per_ip`).
    pub connections_shed: Family<Labels, Counter>,
    /// WebSocket handshakes (TLS included) that did not become a connection, by reason.
    pub handshakes_failed: Family<Labels, Counter>,
    /// Open connections of the HTTP side port.
    pub http_connections: Gauge,
    /// 1 while `/readyz` answers 200.
    pub ready: Gauge,
    /// Seats held by a live connection.
    pub connected_bots: Gauge,
    /// Seats, including those kept for a dropped bot.
    pub seats: Gauge,
    pub live_worlds: Gauge,
    /// How many worlds this server may hold.
    pub world_capacity: Gauge,
    pub tick_duration: Histogram,
    pub ticks: Counter,
    /// Ticks that took longer than the tick interval.
    pub tick_overruns: Counter,
    /// How late shard ticks start after their scheduled time.
    pub tick_lateness: Histogram,
    /// The tick budget used (1.0: at budget, no new bots past it).
    pub tick_load: FloatGauge,
    pub machine_busy: FloatGauge,
    /// Bots the server estimates it can still take.
    pub bot_room: Gauge,
    /// Updates that could not be encoded.
    pub encode_errors: Counter,
    /// Time left on the lease (-1: standalone, no lease needed).
    pub lease_remaining_seconds: FloatGauge,
    /// Worlds suspended because the lease ran out.
    pub lease_lost: Counter,
    pub worlds_suspended: Gauge,
    pub heartbeats: Counter,
    pub heartbeat_failures: Counter,
    pub bytes_sent: Counter,
    pub frames_sent: Counter,
    /// Updates owed to clients / actually handed to their sockets: their ratio is the seed's
    /// "bot sync success rate".
    pub updates_due: Counter,
    pub updates_delivered: Counter,
    pub clients_resynced: Counter,
    pub clients_dropped: Family<Labels, Counter>,
    pub joins: Family<Labels, Counter>,
    pub protocol_errors: Family<Labels, Counter>,
    pub inputs: Counter,
    /// Inputs refused because a world's input queue was full.
    pub inputs_dropped: Counter,
    /// Inputs waiting for the next tick, across worlds.
    pub input_queue: Gauge,
    /// Bytes waiting in per-connection outbound queues (sockets that would block).
    pub outbound_queued_bytes: Gauge,
    /// Used join tickets remembered until they expire.
    pub used_tickets: Gauge,
    /// Activity records waiting for PostgreSQL.
    pub activity_queued: Gauge,
    pub activity_written: Counter,
    /// Activity records lost: the buffer was full, or PostgreSQL stayed down through shutdown.
    pub activity_dropped: Counter,
    pub activity_write_errors: Counter,
    /// Activity records PostgreSQL refused, set aside in `activity_rejected`.
    pub activity_rejected: Counter,
    /// Snapshots written, by store (`redis`, `postgres`).
    pub snapshots_written: Family<Labels, Counter>,
    /// Snapshot writes refused because a newer placement of the world exists.
    pub snapshots_refused: Counter,
    pub snapshot_errors: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("arena");
        let m = Metrics {
            connections: Gauge::default(),
            connections_pending: Gauge::default(),
            connections_shed: Family::default(),
            handshakes_failed: Family::default(),
            http_connections: Gauge::default(),
            ready: Gauge::default(),
            connected_bots: Gauge::default(),
            seats: Gauge::default(),
            live_worlds: Gauge::default(),
            world_capacity: Gauge::default(),
            // 0.1 ms … ~100 ms
            tick_duration: Histogram::new([0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]),
            ticks: Counter::default(),
            tick_overruns: Counter::default(),
            // 0.1 ms … ~500 ms
            tick_lateness: Histogram::new([0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5]),
            tick_load: FloatGauge::default(),
            machine_busy: FloatGauge::default(),
            bot_room: Gauge::default(),
            encode_errors: Counter::default(),
            lease_remaining_seconds: FloatGauge::default(),
            lease_lost: Counter::default(),
            worlds_suspended: Gauge::default(),
            heartbeats: Counter::default(),
            heartbeat_failures: Counter::default(),
            bytes_sent: Counter::default(),
            frames_sent: Counter::default(),
            updates_due: Counter::default(),
            updates_delivered: Counter::default(),
            clients_resynced: Counter::default(),
            clients_dropped: Family::default(),
            joins: Family::default(),
            protocol_errors: Family::default(),
            inputs: Counter::default(),
            inputs_dropped: Counter::default(),
            input_queue: Gauge::default(),
            outbound_queued_bytes: Gauge::default(),
            used_tickets: Gauge::default(),
            activity_queued: Gauge::default(),
            activity_written: Counter::default(),
            activity_dropped: Counter::default(),
            activity_write_errors: Counter::default(),
            activity_rejected: Counter::default(),
            snapshots_written: Family::default(),
            snapshots_refused: Counter::default(),
            snapshot_errors: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("connections", "Open WebSocket connections", m.connections.clone());
        r.register("connections_pending", "Connections waiting to join", m.connections_pending.clone());
        r.register("connections_shed", "Connections answered 503 at once, by reason", m.connections_shed.clone());
        r.register(
            "ws_handshakes_failed",
            "WebSocket handshakes that did not become a connection (timeout, too_large, refused, eof, io, not_tls, tls)",
            m.handshakes_failed.clone(),
        );
        r.register("http_connections", "Open connections of the HTTP side port", m.http_connections.clone());
        r.register("ready", "1 while the server is ready to take players", m.ready.clone());
        r.register("connected_bots", "Seats held by a live connection (concurrent players)", m.connected_bots.clone());
        r.register("seats", "Seats, including those kept for dropped bots", m.seats.clone());
        r.register("live_worlds", "Worlds loaded in this server", m.live_worlds.clone());
        r.register("world_capacity", "Worlds this server may hold (world pool capacity)", m.world_capacity.clone());
        r.register("tick_duration_seconds", "Time to tick one shard of worlds", m.tick_duration.clone());
        r.register("ticks", "Shard ticks run", m.ticks.clone());
        r.register("tick_overruns", "Shard ticks longer than the tick interval", m.tick_overruns.clone());
        r.register("tick_lateness_seconds", "How late shard ticks start", m.tick_lateness.clone());
        r.register("tick_load", "Tick budget used (1.0: at budget; no new bots past it)", m.tick_load.clone());
        r.register("machine_busy", "Share of the machine's CPU that was busy (everyone's)", m.machine_busy.clone());
        r.register("bot_room", "Bots the server estimates it can still take", m.bot_room.clone());
        r.register("encode_errors", "Updates that could not be encoded", m.encode_errors.clone());
        r.register(
            "lease_remaining_seconds",
            "Time left on the lease (-1: standalone)",
            m.lease_remaining_seconds.clone(),
        );
        r.register("lease_lost", "Worlds suspended because the lease ran out", m.lease_lost.clone());
        r.register(
            "worlds_suspended",
            "Worlds suspended (lease lost), waiting for their placement",
            m.worlds_suspended.clone(),
        );
        r.register("heartbeats", "Heartbeats the allocator acknowledged", m.heartbeats.clone());
        r.register("heartbeat_failures", "Heartbeats no allocator acknowledged", m.heartbeat_failures.clone());
        r.register("bytes_sent", "Bytes handed to client sockets", m.bytes_sent.clone());
        r.register("frames_sent", "WebSocket frames handed to client sockets", m.frames_sent.clone());
        r.register("updates_due", "Per-client updates owed", m.updates_due.clone());
        r.register("updates_delivered", "Per-client updates handed to the socket", m.updates_delivered.clone());
        r.register("clients_resynced", "Lagging clients sent a fresh snapshot", m.clients_resynced.clone());
        r.register("clients_dropped", "Clients disconnected by the server, by reason", m.clients_dropped.clone());
        r.register("joins", "Join and resume attempts, by result", m.joins.clone());
        r.register("protocol_errors", "Errors sent to clients, by code", m.protocol_errors.clone());
        r.register("inputs", "Inputs queued for a tick", m.inputs.clone());
        r.register("inputs_dropped", "Inputs refused because a world's queue was full", m.inputs_dropped.clone());
        r.register("input_queue", "Inputs waiting for the next tick", m.input_queue.clone());
        r.register(
            "outbound_queued_bytes",
            "Bytes queued for sockets that would block",
            m.outbound_queued_bytes.clone(),
        );
        r.register("used_tickets", "Used join tickets remembered until expiry", m.used_tickets.clone());
        r.register("activity_queued", "Activity records waiting for PostgreSQL", m.activity_queued.clone());
        r.register("activity_written", "Activity records written to PostgreSQL", m.activity_written.clone());
        r.register(
            "activity_dropped",
            "Activity records lost (buffer full, or database down at shutdown)",
            m.activity_dropped.clone(),
        );
        r.register("activity_write_errors", "Failed activity batch writes (retried)", m.activity_write_errors.clone());
        r.register(
            "activity_rejected",
            "Activity records PostgreSQL refused, set aside in activity_rejected",
            m.activity_rejected.clone(),
        );
        r.register("snapshots_written", "World snapshots written, by store", m.snapshots_written.clone());
        r.register(
            "snapshots_refused",
            "Snapshot writes refused: a newer placement exists",
            m.snapshots_refused.clone(),
        );
        r.register("snapshot_errors", "Failed snapshot writes, by store", m.snapshot_errors.clone());
        Metrics { registry, ..m }
    }

    pub fn count(family: &Family<Labels, Counter>, label: &'static str, value: &'static str) {
        family.get_or_create(&[(label, value)]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let m = Metrics::new();
        m.connected_bots.set(3);
        Metrics::count(&m.clients_dropped, "reason", "slow_consumer");
        m.tick_duration.observe(0.002);
        let text = m.render();
        assert!(text.contains("arena_connected_bots 3"), "{text}");
        assert!(text.contains(r#"arena_clients_dropped_total{reason="slow_consumer"} 1"#), "{text}");
        assert!(text.contains("arena_tick_duration_seconds_count 1"), "{text}");
    }
}
