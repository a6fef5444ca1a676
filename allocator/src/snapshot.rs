//! The registry's state as the allocator sees it, and an index of it built for fast decisions.
//!
//! A [`Snapshot`] is what the registry returns (every server, every placed world). Each
//! allocator replica turns it into an [`Index`] a few times a second and keeps the index current
//! with the outcome of its own reservations in between, so a decision costs a lookup, not a scan.
//! The registry's atomic reservation has the last word; the index only has to be a good guess.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use arena_sdk::allocator_api::{Heartbeat, ServerState};
use serde::{Deserialize, Serialize};

/// A gameserver as the registry knows it (stored as JSON in Redis, without its id, which is the
/// hash field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerView {
    #[serde(skip)]
    pub id: String,
    pub region: String,
    pub ws: String,
    pub state: ServerState,
    pub max_worlds: u32,
    pub world_capacity: u32,
    /// When its last heartbeat arrived (Unix milliseconds).
    pub last_seen_ms: u64,
}

impl ServerView {
    /// The server a heartbeat describes, heard from at `now_ms`.
    pub fn from_heartbeat(hb: &Heartbeat, now_ms: u64) -> Self {
        ServerView {
            id: hb.server_id.clone(),
            region: hb.region.clone(),
            ws: hb.endpoints.ws.clone(),
            state: hb.state,
            max_worlds: hb.max_worlds,
            world_capacity: hb.world_capacity,
            last_seen_ms: now_ms,
        }
    }

    /// Heard from within `timeout_ms` of `now_ms`.
    pub fn alive(&self, now_ms: u64, timeout_ms: u64) -> bool {
        now_ms <= self.last_seen_ms.saturating_add(timeout_ms)
    }

    /// Alive and taking new seats.
    pub fn ready(&self, now_ms: u64, timeout_ms: u64) -> bool {
        self.state == ServerState::Ready && self.alive(now_ms, timeout_ms)
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

/// What the registry hands a replica: every server, how many worlds each holds, and the worlds
/// that have a free seat. Full worlds are only counted, not listed: a packed fleet has few open
/// worlds and many full ones, so the snapshot stays small as the fleet grows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
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
    /// Its worlds with a free seat, fullest first.
    open: BTreeSet<(Reverse<u32>, String)>,
}

impl ServerEntry {
    /// The fullest world with a free seat.
    pub fn fullest_open_world(&self) -> Option<(&str, u32)> {
        self.open.iter().next().map(|(Reverse(used), w)| (w.as_str(), *used))
    }

    pub fn has_world_room(&self) -> bool {
        self.worlds < self.view.max_worlds
    }

    /// Share of its seats in use, counting seats of worlds it could still place.
    pub fn utilisation(&self) -> f64 {
        let seats = f64::from(self.view.max_worlds) * f64::from(self.view.world_capacity);
        if seats == 0.0 { 1.0 } else { f64::from(self.bots) / seats }
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
}

impl Index {
    pub fn build(snap: &Snapshot) -> Self {
        let mut ix = Index::default();
        for s in &snap.servers {
            ix.regions.entry(s.region.clone()).or_default().push(s.id.clone());
            ix.servers.insert(s.id.clone(), ServerEntry { view: s.clone(), bots: 0, worlds: 0, open: BTreeSet::new() });
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
            state: ServerState::Ready,
            max_worlds,
            world_capacity: 30,
            last_seen_ms: 1_000,
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
    fn liveness_follows_the_timeout() {
        let s = server("a", "us", 1);
        assert!(s.alive(6_000, 5_000));
        assert!(!s.alive(6_001, 5_000));
        let draining = ServerView { state: ServerState::Draining, ..s };
        assert!(draining.alive(1_000, 5_000) && !draining.ready(1_000, 5_000));
    }
}
