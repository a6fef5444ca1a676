//! The registry's state as the allocator sees it, and an index of it built for fast decisions.
//!
//! A [`Snapshot`] is what the registry returns (its time, every server, every placed world).
//! Each allocator replica turns it into an [`Index`] a few times a second and keeps the index
//! current with the outcome of its own reservations in between, so a decision costs a lookup,
//! not a scan. The registry's atomic reservation has the last word; the index only has to be a
//! good guess. Liveness is judged on the registry's clock (the snapshot's time plus the time
//! since it was taken), never on the replica's wall clock.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use arena_sdk::allocator_api::{Endpoints, Heartbeat, ServerLoad, ServerState};
use serde::{Deserialize, Serialize};

/// Whether servers are alive, on the registry's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// The registry's time.
    pub now_ms: u64,
    /// When the registry came back from a blackout: servers count as heard from then.
    pub resume_ms: u64,
    /// A server not heard from for this long gets no seats.
    pub timeout_ms: u64,
}

/// A gameserver as the registry knows it (stored as JSON in Redis, without its id, which is the
/// hash field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerView {
    #[serde(skip)]
    pub id: String,
    pub region: String,
    pub ws: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic_cert_sha256: Option<String>,
    pub state: ServerState,
    pub max_worlds: u32,
    pub world_capacity: u32,
    /// When its last heartbeat arrived (Unix milliseconds, registry time).
    pub last_seen_ms: u64,
    /// Its measured load, if it reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<ServerLoad>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl ServerView {
    /// The server a heartbeat describes, heard from at `now_ms`.
    pub fn from_heartbeat(hb: &Heartbeat, now_ms: u64) -> Self {
        ServerView {
            id: hb.server_id.clone(),
            region: hb.region.clone(),
            ws: hb.endpoints.ws.clone(),
            quic: hb.endpoints.quic.clone(),
            quic_cert_sha256: hb.endpoints.quic_cert_sha256.clone(),
            state: hb.state,
            max_worlds: hb.max_worlds,
            world_capacity: hb.world_capacity,
            last_seen_ms: now_ms,
            load: hb.load,
            version: hb.version.clone(),
        }
    }

    /// Where bots connect to it.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints { ws: self.ws.clone(), quic: self.quic.clone(), quic_cert_sha256: self.quic_cert_sha256.clone() }
    }

    /// Heard from within the timeout (counting from a blackout's end at the earliest).
    pub fn alive(&self, l: Liveness) -> bool {
        l.now_ms <= self.last_seen_ms.max(l.resume_ms).saturating_add(l.timeout_ms)
    }

    /// Alive and taking seats.
    pub fn ready(&self, l: Liveness) -> bool {
        self.state == ServerState::Ready && self.alive(l)
    }

    /// Bots its tick budget still allows, as it last reported (unbounded without a report).
    pub fn load_room(&self) -> u32 {
        self.load.map_or(u32::MAX, |l| l.room)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldView {
    pub id: String,
    pub server: String,
    /// Placement generation (fencing token).
    pub fence: u64,
    /// Seats taken plus seats reserved.
    pub used: u32,
}

/// What the registry hands a replica: its time, every server, how many worlds each holds, and
/// the worlds that have a free seat. Full worlds are only counted, not listed: a packed fleet has
/// few open worlds and many full ones, so the snapshot stays small as the fleet grows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The registry's time when it answered.
    pub now_ms: u64,
    /// When the registry came back from its last blackout (0: never).
    pub resume_ms: u64,
    /// When it last heard from any server (0: never).
    pub heard_ms: u64,
    pub servers: Vec<ServerView>,
    /// Worlds placed on each server; a server missing here holds the worlds listed for it.
    pub placed: HashMap<String, u32>,
    /// Worlds with a free seat (a listed full world is fine too).
    pub worlds: Vec<WorldView>,
}

#[derive(Debug, Clone)]
pub struct ServerEntry {
    pub view: ServerView,
    /// Seats used over all its worlds.
    pub bots: u32,
    /// Worlds placed on it.
    pub worlds: u32,
    /// Bots its tick budget still allows: its last report, less the seats this replica gave it
    /// since.
    pub room_left: u32,
    /// Its worlds with a free seat, fullest first.
    open: BTreeSet<(Reverse<u32>, String)>,
}

impl ServerEntry {
    /// Whether it takes new bots: ready, and not past its tick budget.
    pub fn takes_new_bots(&self, l: Liveness) -> bool {
        self.view.ready(l) && self.room_left > 0
    }

    /// Free seats: the lesser of its seats and what its tick budget still allows.
    pub fn free_seats(&self) -> u64 {
        let seats = u64::from(self.view.max_worlds) * u64::from(self.view.world_capacity);
        seats.saturating_sub(u64::from(self.bots)).min(u64::from(self.room_left))
    }

    /// The fullest world with a free seat.
    pub fn fullest_open_world(&self) -> Option<(&str, u32)> {
        self.open.iter().next().map(|(Reverse(used), w)| (w.as_str(), *used))
    }

    pub fn has_world_room(&self) -> bool {
        self.worlds < self.view.max_worlds
    }

    /// Share of its seats in use, counting seats of worlds it could still place.
    pub fn seat_utilisation(&self) -> f64 {
        let seats = f64::from(self.view.max_worlds) * f64::from(self.view.world_capacity);
        if seats == 0.0 { 1.0 } else { f64::from(self.bots) / seats }
    }

    /// How full it is: its seats or its tick budget, whichever is further used.
    pub fn fill(&self) -> f64 {
        let tick = self.view.load.map_or(0.0, |l| f64::from(l.tick));
        self.seat_utilisation().max(tick)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldEntry {
    pub server: String,
    pub fence: u64,
    pub used: u32,
}

/// A snapshot organised for decisions.
#[derive(Debug, Clone, Default)]
pub struct Index {
    servers: HashMap<String, ServerEntry>,
    worlds: HashMap<String, WorldEntry>,
    regions: BTreeMap<String, Vec<String>>,
    /// The snapshot's registry time, blackout end, and last heartbeat from anyone.
    pub now_ms: u64,
    pub resume_ms: u64,
    pub heard_ms: u64,
}

impl Index {
    pub fn build(snap: &Snapshot) -> Self {
        let mut ix =
            Index { now_ms: snap.now_ms, resume_ms: snap.resume_ms, heard_ms: snap.heard_ms, ..Index::default() };
        for s in &snap.servers {
            ix.regions.entry(s.region.clone()).or_default().push(s.id.clone());
            let entry =
                ServerEntry { view: s.clone(), bots: 0, worlds: 0, room_left: s.load_room(), open: BTreeSet::new() };
            ix.servers.insert(s.id.clone(), entry);
        }
        for w in &snap.worlds {
            ix.set_world(&w.id, &w.server, w.fence, w.used);
        }
        // Worlds placed but not listed are full.
        for (id, placed) in &snap.placed {
            if let Some(s) = ix.servers.get_mut(id)
                && *placed > s.worlds
            {
                s.bots += (placed - s.worlds) * s.view.world_capacity;
                s.worlds = *placed;
            }
        }
        for ids in ix.regions.values_mut() {
            ids.sort();
        }
        ix
    }

    /// Learn where a world is (looked up in the registry) without counting it again: it is
    /// already part of its server's world count.
    pub fn locate(&mut self, id: &str, server: &str, fence: u64, used: u32) {
        if let Some(old) = self.worlds.get(id)
            && old.server == server
        {
            self.set_world(id, server, fence, used);
            return;
        }
        if let Some(s) = self.servers.get_mut(server) {
            // Count it as one of the full ones the server already holds, now with its real use.
            s.worlds = s.worlds.saturating_sub(1);
            s.bots = s.bots.saturating_sub(s.view.world_capacity.min(s.bots));
        }
        self.set_world(id, server, fence, used);
    }

    pub fn server(&self, id: &str) -> Option<&ServerEntry> {
        self.servers.get(id)
    }

    pub fn world(&self, id: &str) -> Option<&WorldEntry> {
        self.worlds.get(id)
    }

    pub fn has_region(&self, region: &str) -> bool {
        self.regions.contains_key(region)
    }

    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.regions.keys().map(String::as_str)
    }

    /// The servers of `region`, by id.
    pub fn servers_in(&self, region: &str) -> impl Iterator<Item = &ServerEntry> {
        self.regions.get(region).into_iter().flatten().filter_map(|id| self.servers.get(id))
    }

    pub fn servers(&self) -> impl Iterator<Item = &ServerEntry> {
        self.servers.values()
    }

    pub fn worlds(&self) -> impl Iterator<Item = (&String, &WorldEntry)> {
        self.worlds.iter()
    }

    /// Record a world's placement and use (after a reservation, or from the registry).
    pub fn set_world(&mut self, id: &str, server: &str, fence: u64, used: u32) {
        if let Some(old) = self.worlds.remove(id)
            && let Some(s) = self.servers.get_mut(&old.server)
        {
            s.bots = s.bots.saturating_sub(old.used);
            s.worlds = s.worlds.saturating_sub(1);
            s.open.remove(&(Reverse(old.used), id.to_owned()));
        }
        if let Some(s) = self.servers.get_mut(server) {
            s.bots += used;
            s.worlds += 1;
            if used < s.view.world_capacity {
                s.open.insert((Reverse(used), id.to_owned()));
            }
        }
        self.worlds.insert(id.to_owned(), WorldEntry { server: server.to_owned(), fence, used });
    }

    /// Count a seat about to be reserved (before the registry answers), so that concurrent
    /// requests see the world fuller and move on once it is taken.
    pub fn count_pending_seat(&mut self, world: &str, server: &str, fence: u64) {
        let (fence, used) = match self.worlds.get(world) {
            Some(w) => (w.fence, w.used + 1),
            None => (fence, 1),
        };
        self.set_world(world, server, fence, used);
        if let Some(s) = self.servers.get_mut(server) {
            s.room_left = s.room_left.saturating_sub(1);
        }
    }

    /// The registry confirmed a reservation: `used` is its count, which may lag the seats this
    /// replica has counted as pending since, so the larger one is kept until the next refresh.
    pub fn confirm_seat(&mut self, world: &str, server: &str, fence: u64, used: u32) {
        let used = self.worlds.get(world).filter(|w| w.server == server).map_or(used, |w| w.used.max(used));
        self.set_world(world, server, fence, used);
    }

    /// A pending seat was not reserved after all.
    pub fn forget_pending_seat(&mut self, world: &str) {
        if let Some(w) = self.worlds.get(world).cloned() {
            self.set_world(world, &w.server, w.fence, w.used.saturating_sub(1));
            if let Some(s) = self.servers.get_mut(&w.server) {
                s.room_left = s.room_left.saturating_add(1);
            }
        }
    }

    /// The registry says the world is not placed anywhere.
    pub fn remove_world(&mut self, id: &str) {
        if let Some(old) = self.worlds.remove(id)
            && let Some(s) = self.servers.get_mut(&old.server)
        {
            s.bots = s.bots.saturating_sub(old.used);
            s.worlds = s.worlds.saturating_sub(1);
            s.open.remove(&(Reverse(old.used), id.to_owned()));
        }
    }

    /// The registry said the world is full.
    pub fn mark_full(&mut self, id: &str) {
        if let Some(w) = self.worlds.get(id).cloned() {
            let cap = self.servers.get(&w.server).map_or(w.used, |s| s.view.world_capacity);
            self.set_world(id, &w.server, w.fence, cap.max(w.used));
        }
    }

    /// The registry said the server cannot take seats (gone, draining or out of world room).
    pub fn mark_unavailable(&mut self, id: &str) {
        if let Some(s) = self.servers.get_mut(id) {
            s.view.last_seen_ms = 0;
        }
    }

    /// The registry said the server holds as many worlds as it may.
    pub fn mark_world_room_full(&mut self, id: &str) {
        if let Some(s) = self.servers.get_mut(id) {
            s.worlds = s.worlds.max(s.view.max_worlds);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn server(id: &str, region: &str, max_worlds: u32) -> ServerView {
        ServerView {
            id: id.into(),
            region: region.into(),
            ws: format!("ws://{id}/ws"),
            quic: None,
            quic_cert_sha256: None,
            state: ServerState::Ready,
            max_worlds,
            world_capacity: 30,
            last_seen_ms: 1_000,
            load: None,
            version: None,
        }
    }

    #[test]
    fn index_tracks_use_per_server() {
        let snap = Snapshot {
            servers: vec![server("a", "us", 2), server("b", "us", 2)],
            placed: HashMap::new(),
            worlds: vec![
                WorldView { id: "w1".into(), server: "a".into(), fence: 1, used: 10 },
                WorldView { id: "w2".into(), server: "a".into(), fence: 2, used: 30 },
            ],
            ..Snapshot::default()
        };
        let mut ix = Index::build(&snap);
        let a = ix.server("a").unwrap();
        assert_eq!((a.bots, a.worlds), (40, 2));
        assert_eq!(a.fullest_open_world(), Some(("w1", 10)), "full worlds are not open");
        assert!(!a.has_world_room());
        ix.set_world("w1", "a", 1, 11);
        assert_eq!(ix.server("a").unwrap().bots, 41);
        ix.mark_full("w1");
        assert_eq!(ix.server("a").unwrap().fullest_open_world(), None);
        // A world re-placed on another server moves its seats along.
        ix.set_world("w2", "b", 3, 0);
        assert_eq!((ix.server("a").unwrap().worlds, ix.server("b").unwrap().worlds), (1, 1));
        assert_eq!(ix.servers_in("us").count(), 2);
        assert!(ix.has_region("us") && !ix.has_region("eu"));
    }

    #[test]
    fn full_worlds_are_counted_not_listed() {
        let snap = Snapshot {
            servers: vec![server("a", "us", 10)],
            placed: HashMap::from([("a".to_string(), 4)]),
            worlds: vec![WorldView { id: "w1".into(), server: "a".into(), fence: 1, used: 10 }],
            ..Snapshot::default()
        };
        let mut ix = Index::build(&snap);
        let a = ix.server("a").unwrap();
        assert_eq!((a.worlds, a.bots), (4, 3 * 30 + 10));
        // A full world looked up on demand replaces one of the counted ones.
        ix.locate("w2", "a", 2, 30);
        let a = ix.server("a").unwrap();
        assert_eq!((a.worlds, a.bots), (4, 100));
        assert_eq!(ix.world("w2").unwrap().fence, 2);
    }

    #[test]
    fn liveness_follows_the_timeout_on_the_registrys_clock() {
        let s = server("a", "us", 1);
        let at = |now_ms| Liveness { now_ms, resume_ms: 0, timeout_ms: 5_000 };
        assert!(s.alive(at(6_000)));
        assert!(!s.alive(at(6_001)));
        // After a blackout of the registry, servers count as heard from when it came back.
        assert!(s.alive(Liveness { resume_ms: 9_000, ..at(14_000) }));
        let draining = ServerView { state: ServerState::Draining, ..s };
        assert!(draining.alive(at(1_000)) && !draining.ready(at(1_000)));
    }

    #[test]
    fn room_is_the_lesser_of_seats_and_tick_budget() {
        let loaded = ServerView { load: Some(ServerLoad { tick: 0.9, bots: 40, room: 2 }), ..server("a", "us", 10) };
        let snap = Snapshot { servers: vec![loaded], ..Snapshot::default() };
        let mut ix = Index::build(&snap);
        assert_eq!(ix.server("a").unwrap().free_seats(), 2);
        ix.count_pending_seat("w", "a", 1);
        ix.count_pending_seat("w", "a", 1);
        let l = Liveness { now_ms: 1_000, resume_ms: 0, timeout_ms: 5_000 };
        assert!(!ix.server("a").unwrap().takes_new_bots(l), "past its budget: no new bots");
        ix.forget_pending_seat("w");
        assert!(ix.server("a").unwrap().takes_new_bots(l));
    }
}
