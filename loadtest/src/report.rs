//! The run's report: JSON, a terminal table, and a self-contained SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use arena_service::svg::Panel;
use serde::Serialize;

use crate::stats::Percentiles;

/// One process the swarm watched (a server it started, or itself).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProcReport {
    pub name: String,
    pub pid: u32,
    /// CPU seconds used while all bots were connected (the hold phase).
    pub hold_cpu_seconds: f64,
    /// Average cores used during the hold phase.
    pub hold_cores: f64,
    /// CPU seconds over the whole run.
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
    /// RSS before the first bot connected.
    pub baseline_rss_bytes: u64,
    /// RSS when all bots were connected.
    pub loaded_rss_bytes: u64,
    /// loaded RSS / connected bots.
    pub rss_per_bot_bytes: f64,
    /// (loaded - baseline) RSS / connected bots.
    pub added_rss_per_bot_bytes: f64,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    pub t_s: f64,
    pub joined: i64,
    pub updates_per_s: f64,
    pub input_ack_p50_ms: f64,
    pub input_ack_p99_ms: f64,
    /// p99 of the joins that completed in this second (0 when none did).
    #[serde(default)]
    pub join_p99_ms: f64,
    pub errors: u64,
    pub server_cores: f64,
    pub loadtest_cores: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub bots: usize,
    /// Bots that joined at least once.
    pub joined: u64,
    /// Bots still connected when the hold phase ended.
    pub joined_at_end: i64,
    pub encoding: String,
    /// `ws` or `quic`.
    pub transport: String,
    pub inputs_per_bot_per_s: f64,
    pub ramp_per_s: f64,
    pub ramp_s: f64,
    pub hold_s: f64,
    pub duration_s: f64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Bots the fleet refused (no room, overloaded), by its answer: not errors.
    #[serde(default)]
    pub refused: u64,
    #[serde(default)]
    pub refused_by_kind: BTreeMap<String, u64>,
    /// Seats the allocator counted at the end of the hold beyond those the gameservers held
    /// (reservations nobody will use); `None` without an allocator.
    #[serde(default)]
    pub leaked_reservations: Option<i64>,
    pub disconnects: u64,
    pub reconnects: u64,
    /// Connections closed because the bot's world moved (a drain, a re-placement).
    #[serde(default)]
    pub moved: u64,
    /// Bots allocated again after losing their connection that got their own seat back (same
    /// bot id), and those that got a new one.
    #[serde(default)]
    pub seats_kept: u64,
    #[serde(default)]
    pub seats_lost: u64,
    pub tick_gaps: u64,
    pub unacked_inputs: u64,
    pub join_ms: Percentiles,
    pub join_alloc_ms: Percentiles,
    pub join_connect_ms: Percentiles,
    pub join_welcome_ms: Percentiles,
    pub input_ack_ms: Percentiles,
    pub update_interarrival_ms: Percentiles,
    pub updates_per_s: f64,
    pub inputs_per_s: f64,
    pub bytes_in_per_s: f64,
    pub bytes_out_per_s: f64,
    pub servers: Vec<ProcReport>,
    pub loadtester: Option<ProcReport>,
    /// Counters of the servers started with --local, summed, over the hold phase (per second).
    pub server_counters_per_s: std::collections::BTreeMap<String, f64>,
    pub slo_failures: Vec<String>,
    pub timeline: Vec<Point>,
}

/// A named, coloured line of a chart panel.
type Series<'a> = (&'a str, &'a str, Vec<f64>);

fn row(out: &mut String, name: &str, p: &Percentiles) {
    let _ = writeln!(out, "  {name:<26} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2}", p.count, p.p50, p.p95, p.p99, p.max);
}

impl Report {
    /// The terminal table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "bots {} ({} joined, {} at end), {} over {}, {} inputs/bot/s, ramp {:.1} s at {}/s, hold {:.1} s",
            self.bots,
            self.joined,
            self.joined_at_end,
            self.encoding,
            self.transport,
            self.inputs_per_bot_per_s,
            self.ramp_s,
            self.ramp_per_s,
            self.hold_s
        );
        let _ =
            writeln!(o, "  {:<26} {:>9} {:>9} {:>9} {:>9} {:>9}", "latency (ms)", "count", "p50", "p95", "p99", "max");
        row(&mut o, "join total", &self.join_ms);
        row(&mut o, "  allocate", &self.join_alloc_ms);
        row(&mut o, "  connect", &self.join_connect_ms);
        row(&mut o, "  first snapshot", &self.join_welcome_ms);
        row(&mut o, "input -> acked update", &self.input_ack_ms);
        row(&mut o, "update inter-arrival", &self.update_interarrival_ms);
        let _ = writeln!(
            o,
            "  updates/s {:.0}  inputs/s {:.0}  in {:.1} MB/s  out {:.2} MB/s",
            self.updates_per_s,
            self.inputs_per_s,
            self.bytes_in_per_s / 1e6,
            self.bytes_out_per_s / 1e6
        );
        let _ = writeln!(
            o,
            "  errors {}  disconnects {}  reconnects {}  tick gaps {}  unacked inputs {}",
            self.errors, self.disconnects, self.reconnects, self.tick_gaps, self.unacked_inputs
        );
        for (kind, n) in &self.errors_by_kind {
            let _ = writeln!(o, "    {kind}: {n}");
        }
        if self.moved > 0 || self.seats_kept > 0 || self.seats_lost > 0 {
            let _ = writeln!(
                o,
                "  moved by the server {}  came back to their own seat {}  to a new seat {}",
                self.moved, self.seats_kept, self.seats_lost
            );
        }
        if self.refused > 0 || self.leaked_reservations.is_some() {
            let leaked = self.leaked_reservations.map_or("-".to_owned(), |n| n.to_string());
            let _ = writeln!(o, "  refused {} (the fleet had no room)  leaked reservations {leaked}", self.refused);
            for (kind, n) in &self.refused_by_kind {
                let _ = writeln!(o, "    {kind}: {n}");
            }
        }
        for p in self.servers.iter().chain(self.loadtester.iter()) {
            let _ = writeln!(
                o,
                "  {:<12} hold {:.2} cores ({:.1} cpu-s), peak RSS {:.1} MB, {:.0} B/bot ({:.0} B/bot over baseline)",
                p.name,
                p.hold_cores,
                p.hold_cpu_seconds,
                p.peak_rss_bytes as f64 / 1e6,
                p.rss_per_bot_bytes,
                p.added_rss_per_bot_bytes
            );
        }
        let notable = |n: &str, v: f64| (n.contains("activity") || n.contains("dropped")) && v > 0.0;
        for (name, rate) in self.server_counters_per_s.iter().filter(|(n, v)| notable(n, **v)) {
            let _ = writeln!(o, "  {name}: {rate:.1}/s");
        }
        for f in &self.slo_failures {
            let _ = writeln!(o, "  SLO FAILED: {f}");
        }
        o
    }

    /// A self-contained SVG: connected bots, and input → ack latency (p50, p99), over time.
    pub fn svg(&self) -> String {
        let (w, h, pad) = (900.0, 560.0, 60.0);
        let panel_h = (h - 3.0 * pad) / 2.0;
        let t_max = self.timeline.last().map_or(1.0, |p| p.t_s).max(1.0);
        let x = |t: f64| pad + (t / t_max) * (w - 2.0 * pad);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
        );
        let _ = write!(
            s,
            r#"<text x="{pad}" y="20" font-size="14">arena-loadtest: {} bots, {} encoding, {} inputs/bot/s</text>"#,
            self.bots, self.encoding, self.inputs_per_bot_per_s
        );
        let panels: [(&str, f64, Vec<Series>); 2] = [
            (
                "connected bots",
                pad,
                vec![("joined", "#1f77b4", self.timeline.iter().map(|p| p.joined as f64).collect())],
            ),
            (
                "input → acked update (ms)",
                2.0 * pad + panel_h,
                vec![
                    ("p50", "#2ca02c", self.timeline.iter().map(|p| p.input_ack_p50_ms).collect()),
                    ("p99", "#d62728", self.timeline.iter().map(|p| p.input_ack_p99_ms).collect()),
                ],
            ),
        ];
        for (title, top, series) in panels {
            let y_max = series.iter().flat_map(|(_, _, v)| v.iter().copied()).fold(1.0f64, f64::max) * 1.1;
            let panel = Panel { pad, width: w, top, height: panel_h, y_max };
            let y = |v: f64| panel.y(v);
            panel.frame(&mut s, title);
            for (i, (name, color, values)) in series.iter().enumerate() {
                let points: Vec<String> =
                    self.timeline.iter().zip(values).map(|(p, v)| format!("{:.1},{:.1}", x(p.t_s), y(*v))).collect();
                let _ = write!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{color}">{name}</text>"#,
                    points.join(" "),
                    w - pad + 6.0,
                    top + 14.0 + 14.0 * i as f64
                );
            }
        }
        for frac in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let t = t_max * frac;
            let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{t:.0} s</text>"#, x(t), h - pad + 30.0);
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: f64) -> Percentiles {
        Percentiles { count: 1, p50: v, p95: v, p99: v, max: v }
    }

    fn report() -> Report {
        Report {
            bots: 10,
            joined: 10,
            joined_at_end: 10,
            encoding: "msgpack".into(),
            transport: "ws".into(),
            inputs_per_bot_per_s: 2.0,
            ramp_per_s: 100.0,
            ramp_s: 0.1,
            hold_s: 2.0,
            duration_s: 2.1,
            errors: 0,
            errors_by_kind: BTreeMap::new(),
            refused: 0,
            refused_by_kind: BTreeMap::new(),
            leaked_reservations: None,
            disconnects: 0,
            reconnects: 0,
            moved: 0,
            seats_kept: 0,
            seats_lost: 0,
            tick_gaps: 0,
            unacked_inputs: 0,
            join_ms: p(3.0),
            join_alloc_ms: p(0.1),
            join_connect_ms: p(1.0),
            join_welcome_ms: p(1.9),
            input_ack_ms: p(30.0),
            update_interarrival_ms: p(50.0),
            updates_per_s: 200.0,
            inputs_per_s: 20.0,
            bytes_in_per_s: 1e5,
            bytes_out_per_s: 1e3,
            servers: vec![],
            loadtester: None,
            server_counters_per_s: BTreeMap::new(),
            slo_failures: vec![],
            timeline: vec![
                Point {
                    t_s: 1.0,
                    joined: 5,
                    updates_per_s: 100.0,
                    input_ack_p50_ms: 20.0,
                    input_ack_p99_ms: 40.0,
                    join_p99_ms: 3.0,
                    errors: 0,
                    server_cores: 0.1,
                    loadtest_cores: 0.1,
                },
                Point {
                    t_s: 2.0,
                    joined: 10,
                    updates_per_s: 200.0,
                    input_ack_p50_ms: 25.0,
                    input_ack_p99_ms: 45.0,
                    join_p99_ms: 0.0,
                    errors: 0,
                    server_cores: 0.1,
                    loadtest_cores: 0.1,
                },
            ],
        }
    }

    #[test]
    fn json_has_the_documented_keys() {
        let v = serde_json::to_value(report()).unwrap();
        for key in ["bots", "joined", "duration_s", "errors", "disconnects", "updates_per_s"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        for key in ["join_ms", "input_ack_ms"] {
            for q in ["p50", "p95", "p99", "max"] {
                assert!(v[key][q].is_number(), "{key}.{q}");
            }
        }
    }

    #[test]
    fn svg_and_table_render() {
        let r = report();
        let svg = r.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(r.table().contains("input -> acked update"));
    }
}
