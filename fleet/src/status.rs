//! What a fleet shows: per region, its servers and load, the last scaling decision and why, and
//! the recent events; also the timeline a run leaves behind. The HTTP API serves these types;
//! `arena-fleet status` and the live view render them as a table.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// `GET /v1/fleets`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub allocator: Vec<String>,
    /// Seconds since the fleet started.
    pub uptime_s: f64,
    /// The allocator's view could be read at the last sync.
    pub allocator_ok: bool,
    pub regions: Vec<RegionStatus>,
    /// The latest events, oldest first.
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionStatus {
    pub name: String,
    pub desired: u32,
    pub min: u32,
    pub max: u32,
    /// The template version servers should run.
    pub version: String,
    pub ready: u32,
    pub starting: u32,
    pub draining: u32,
    /// Servers of another version still running (a rolling update is under way).
    pub outdated: u32,
    pub worlds: u64,
    pub seats_used: u64,
    /// Seats of the servers that take bots.
    pub seats: u64,
    /// Bots the servers can still take (free seats, bounded by their tick budgets).
    pub room: u64,
    pub utilisation: f64,
    pub last_decision: Option<DecisionRecord>,
    /// Set while the region's servers keep crashing.
    pub crash_loop: Option<String>,
    pub servers: Vec<ServerStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Seconds since the fleet started.
    pub at_s: f64,
    pub from: u32,
    pub to: u32,
    pub policy: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub id: String,
    pub version: String,
    /// `starting`, `running` or `draining`.
    pub phase: String,
    /// The allocator places bots on it.
    pub ready: bool,
    pub seats_used: u32,
    pub worlds: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws_url: Option<String>,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the fleet started.
    pub t_s: f64,
    pub region: String,
    /// `scale`, `start`, `ready`, `first_seats`, `drain`, `stopped`, `crashed`, `kill`, `spec`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    pub detail: String,
    /// For `first_seats`: seconds from the decision that started the server to its first seat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secs: Option<f64>,
}

/// One region at one sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub t_s: f64,
    pub region: String,
    pub desired: u32,
    pub ready: u32,
    pub starting: u32,
    pub draining: u32,
    pub seats_used: u64,
    pub seats: u64,
}

/// `GET /v1/fleets/timeline`: every sample and event of the run (bounded).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub samples: Vec<Sample>,
    pub events: Vec<Event>,
}

/// Events the table shows.
const RECENT_IN_TABLE: usize = 8;

impl FleetStatus {
    /// The status as a table, for a terminal, with the latest events.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let alloc = if self.allocator_ok { "" } else { "  (allocator not answering: holding)" };
        let _ = writeln!(o, "fleet up {:.0} s, allocator {}{alloc}", self.uptime_s, self.allocator.join(", "));
        let _ = writeln!(
            o,
            "{:<12} {:>4} {:>7} {:>5} {:>5} {:>5} {:>7} {:>15} {:>6} {:>7}  last decision",
            "region", "want", "min–max", "ready", "start", "drain", "worlds", "seats used/all", "util", "room"
        );
        for r in &self.regions {
            let last = r.last_decision.as_ref().map_or("—".to_owned(), |d| {
                format!("{} → {} at {:.0} s by {}: {}", d.from, d.to, d.at_s, d.policy, d.reason)
            });
            let _ = writeln!(
                o,
                "{:<12} {:>4} {:>7} {:>5} {:>5} {:>5} {:>7} {:>15} {:>5.0}% {:>7}  {last}",
                r.name,
                r.desired,
                format!("{}–{}", r.min, r.max),
                r.ready,
                r.starting,
                r.draining,
                r.worlds,
                format!("{}/{}", r.seats_used, r.seats),
                r.utilisation * 100.0,
                r.room,
            );
            if r.outdated > 0 {
                let _ =
                    writeln!(o, "  rolling update to version {}: {} servers still on another", r.version, r.outdated);
            }
            if let Some(c) = &r.crash_loop {
                let _ = writeln!(o, "  {c}");
            }
        }
        let recent = &self.events[self.events.len().saturating_sub(RECENT_IN_TABLE)..];
        if !recent.is_empty() {
            let _ = writeln!(o, "recent events:");
        }
        for e in recent {
            let server = e.server.as_deref().map_or(String::new(), |s| format!(" {s}"));
            let _ = writeln!(o, "  {:>8.1} s {} {}{server}: {}", e.t_s, e.region, e.kind, e.detail);
        }
        o
    }
}

impl Timeline {
    /// Seconds from each scale-up decision to the new server's first seat.
    pub fn scale_up_times(&self) -> Vec<f64> {
        self.events.iter().filter(|e| e.kind == "first_seats").filter_map(|e| e.secs).collect()
    }
}

/// p50 and max of `v` (0 when empty).
pub fn p50_max(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[(s.len() - 1) / 2], s[s.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_each_region_and_why_it_has_its_size() {
        let s = FleetStatus {
            allocator: vec!["http://127.0.0.1:7100".into()],
            uptime_s: 42.0,
            allocator_ok: true,
            regions: vec![RegionStatus {
                name: "local-a".into(),
                desired: 3,
                min: 1,
                max: 8,
                version: "2".into(),
                ready: 2,
                starting: 1,
                seats_used: 2100,
                seats: 3000,
                utilisation: 0.7,
                outdated: 1,
                last_decision: Some(DecisionRecord {
                    at_s: 40.0,
                    from: 2,
                    to: 3,
                    policy: "buffer".into(),
                    reason: "2100 seats used + buffer 1500 = 3600 over 1500 per server: 3 servers".into(),
                }),
                ..RegionStatus::default()
            }],
            events: vec![],
        };
        let t = s.table();
        assert!(t.contains("local-a"), "{t}");
        assert!(t.contains("2100/3000"), "{t}");
        assert!(t.contains("2 → 3 at 40 s by buffer: 2100 seats used"), "{t}");
        assert!(t.contains("rolling update to version 2: 1 servers still on another"), "{t}");
        assert_eq!(p50_max(&[3.0, 1.0, 2.0]), (2.0, 3.0));
        assert_eq!(p50_max(&[]), (0.0, 0.0));
    }
}
