//! What a region's servers hold and can still take, from the allocator's view
//! (`GET /v1/servers`): the policies' input. Pure.
//!
//! Capacity is measured, not only configured: a server's capacity is the lesser of its seats and
//! the bots it would hold at its tick budget (its bots divided by its reported tick load, once it
//! holds enough bots to tell). On a 2-core machine one gameserver saturates near 6,000–9,000 bots
//! at 20 Hz, well under 334 × 30 seats; policies size the fleet on whichever runs out first.

use arena_sdk::allocator_api::{ServerState, ServerSummary};

/// Bots a server must hold before its load says how many it could.
pub const MEASURE_MIN_BOTS: u32 = 200;
/// Tick load below which a reading says too little to extrapolate from.
pub const MEASURE_MIN_LOAD: f32 = 0.1;

/// A server's capacity in bots: its seats, or fewer if its measured load says so.
pub fn capacity(s: &ServerSummary) -> u64 {
    let seats = u64::from(s.max_worlds) * u64::from(s.world_capacity);
    measured(s).map_or(seats, |m| m.min(seats))
}

/// The bots a server would hold at its tick budget, when it holds enough to tell.
fn measured(s: &ServerSummary) -> Option<u64> {
    let l = s.load?;
    (l.bots >= MEASURE_MIN_BOTS && l.tick >= MEASURE_MIN_LOAD).then(|| {
        // Loads are reported as f32: round off its representation error (0.8 is 0.80000001)
        // before dividing, or 1,000 bots at 80 % would make 1,249.
        let tick = (f64::from(l.tick) * 1e4).round() / 1e4;
        (f64::from(l.bots) / tick).floor() as u64
    })
}

/// Whether the allocator places bots on it.
pub fn takes_bots(s: &ServerSummary) -> bool {
    s.alive && s.state == ServerState::Ready
}

/// A region's load, as the policies see it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RegionLoad {
    /// Servers being sized: running or starting, not draining.
    pub servers: u32,
    /// Bots one server holds at most: the median capacity of the ready servers that hold enough
    /// bots to measure it, or the template's seats when none can tell (a new, empty server says
    /// nothing about what a busy one holds).
    pub seats_per_server: u64,
    pub worlds_per_server: u64,
    /// Seats occupied or reserved, over the region.
    pub seats_used: u64,
    /// Live worlds, over the region.
    pub worlds_used: u64,
    /// Servers holding at least one seat.
    pub busy_servers: u32,
    /// Each ready server's utilisation: seats used over its capacity.
    pub utilisation: Vec<f64>,
}

impl RegionLoad {
    /// The load of the servers in `reported` (the region's, from the allocator), `servers`
    /// being the count under the fleet's management, `template_seats` and `template_worlds`
    /// one server's configured size.
    pub fn of(reported: &[&ServerSummary], servers: u32, template_seats: u64, template_worlds: u64) -> Self {
        let ready: Vec<&&ServerSummary> = reported.iter().filter(|s| takes_bots(s)).collect();
        let mut measured: Vec<u64> = ready.iter().filter(|s| measured(s).is_some()).map(|s| capacity(s)).collect();
        measured.sort_unstable();
        let seats_per_server = if measured.is_empty() {
            template_seats
        } else {
            measured[measured.len() / 2].clamp(1, template_seats.max(1))
        };
        RegionLoad {
            servers,
            seats_per_server,
            worlds_per_server: template_worlds.max(1),
            seats_used: reported.iter().filter(|s| s.alive).map(|s| u64::from(s.seats_used)).sum(),
            worlds_used: reported.iter().filter(|s| s.alive).map(|s| u64::from(s.worlds)).sum(),
            busy_servers: reported.iter().filter(|s| s.alive && s.seats_used > 0).count() as u32,
            utilisation: ready.iter().map(|s| f64::from(s.seats_used) / capacity(s).max(1) as f64).collect(),
        }
    }

    /// Seats used over the capacity of every server being sized.
    pub fn region_utilisation(&self) -> f64 {
        let total = u64::from(self.servers) * self.seats_per_server;
        if total == 0 { 0.0 } else { self.seats_used as f64 / total as f64 }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arena_sdk::allocator_api::ServerLoad;

    pub fn server(id: &str, used: u32, load: Option<(f32, u32)>) -> ServerSummary {
        ServerSummary {
            server_id: id.into(),
            region: "r".into(),
            ws: format!("ws://{id}/ws"),
            quic: None,
            state: ServerState::Ready,
            alive: true,
            last_seen_ms_ago: 100,
            worlds: used.div_ceil(30),
            max_worlds: 50,
            world_capacity: 30,
            seats_used: used,
            load: load.map(|(tick, bots)| ServerLoad { tick, bots, room: 0 }),
            version: Some("1".into()),
        }
    }

    #[test]
    fn capacity_is_the_lesser_of_seats_and_the_tick_budget() {
        assert_eq!(capacity(&server("a", 0, None)), 1500);
        // 1,000 bots at 25 % of the budget: 4,000 would fit, but there are 1,500 seats.
        assert_eq!(capacity(&server("a", 1000, Some((0.25, 1000)))), 1500);
        // 1,000 bots at 80 %: 1,250 fit.
        assert_eq!(capacity(&server("a", 1000, Some((0.8, 1000)))), 1250);
        // Too few bots, or too little load, to extrapolate from.
        assert_eq!(capacity(&server("a", 100, Some((0.9, 100)))), 1500);
        assert_eq!(capacity(&server("a", 300, Some((0.05, 300)))), 1500);
    }

    #[test]
    fn a_region_counts_only_what_is_alive_and_sizes_by_the_median() {
        let a = server("a", 1000, Some((0.8, 1000)));
        let b = server("b", 600, Some((0.2, 600)));
        let c = ServerSummary { alive: false, ..server("c", 900, None) };
        let d = ServerSummary { state: ServerState::Draining, ..server("d", 30, None) };
        let load = RegionLoad::of(&[&a, &b, &c, &d], 3, 1500, 50);
        assert_eq!(load.seats_used, 1630, "the dead server's seats are not counted");
        assert_eq!(load.busy_servers, 3);
        assert_eq!(load.seats_per_server, 1500, "median of 1,250 and 1,500");
        assert_eq!(load.utilisation.len(), 2, "only servers that take bots");
        assert!((load.utilisation[0] - 0.8).abs() < 1e-9);
        assert!((load.region_utilisation() - 1630.0 / 4500.0).abs() < 1e-9);
        // New, empty servers do not pull the measurement back to the configured seats.
        let (e, f) = (server("e", 0, Some((0.01, 0))), server("f", 10, Some((0.02, 10))));
        let hot = server("g", 1000, Some((2.0, 1000)));
        let load = RegionLoad::of(&[&a, &hot, &e, &f], 4, 1500, 50);
        assert_eq!(load.seats_per_server, 1250, "median of 500 and 1,250, the two that can tell");
    }
}
