//! The in-process registry: the embedded default for a single allocator. One lock makes every
//! operation atomic; the rules are those of the module above, exactly as the Redis scripts apply
//! them.

use std::collections::{BTreeMap, HashMap, HashSet};

use arena_sdk::allocator_api::{Heartbeat, HeartbeatReply, ServerState};
use parking_lot::Mutex;

use super::{Conflict, Registry, RegistryError, Reserve, ReserveKind, Reserved, Timing};
use crate::snapshot::{ServerView, Snapshot, WorldView};

#[derive(Debug, Clone)]
struct Placement {
    server: String,
    fence: u64,
    placed_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    servers: HashMap<String, ServerView>,
    placements: HashMap<String, Placement>,
    occupancy: HashMap<String, u32>,
    /// world → reservation id → expiry (ms)
    reservations: HashMap<String, BTreeMap<String, u64>>,
    server_worlds: HashMap<String, HashSet<String>>,
    fence: u64,
    /// The last fence each world was placed with; kept when a placement is forgotten, so a
    /// stale copy reported later is recognised.
    last_fence: HashMap<String, u64>,
}

impl State {
    fn live_reservations(&mut self, world: &str, now_ms: u64) -> u32 {
        match self.reservations.get_mut(world) {
            Some(r) => {
                r.retain(|_, exp| *exp > now_ms);
                r.len() as u32
            }
            None => 0,
        }
    }

    fn used(&mut self, world: &str, now_ms: u64) -> u32 {
        self.occupancy.get(world).copied().unwrap_or(0) + self.live_reservations(world, now_ms)
    }

    fn forget(&mut self, world: &str) {
        if let Some(p) = self.placements.remove(world)
            && let Some(set) = self.server_worlds.get_mut(&p.server)
        {
            set.remove(world);
        }
        self.occupancy.remove(world);
        self.reservations.remove(world);
    }

    fn place(&mut self, world: &str, server: &str, now_ms: u64) -> u64 {
        self.fence += 1;
        self.last_fence.insert(world.to_owned(), self.fence);
        self.placements
            .insert(world.to_owned(), Placement { server: server.to_owned(), fence: self.fence, placed_ms: now_ms });
        self.server_worlds.entry(server.to_owned()).or_default().insert(world.to_owned());
        self.occupancy.insert(world.to_owned(), 0);
        self.fence
    }

    fn alive(&self, server: &str, now_ms: u64, timeout_ms: u64) -> bool {
        self.servers.get(server).is_some_and(|s| s.alive(now_ms, timeout_ms))
    }
}

#[derive(Debug, Default)]
pub struct MemoryRegistry {
    state: Mutex<State>,
    timing: Timing,
}

impl MemoryRegistry {
    /// An empty registry. Its fence counter starts at the current time in microseconds, so
    /// fences keep growing across restarts of the allocator (worlds saved by gameservers keep
    /// the fences they were placed with).
    pub fn new(timing: Timing) -> Self {
        let now_us =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        MemoryRegistry { state: Mutex::new(State { fence: now_us, ..State::default() }), timing }
    }
}

impl Registry for MemoryRegistry {
    async fn heartbeat(&self, hb: &Heartbeat, now_ms: u64) -> Result<HeartbeatReply, RegistryError> {
        let mut st = self.state.lock();
        st.servers.insert(hb.server_id.clone(), ServerView::from_heartbeat(hb, now_ms));
        let mut reply = HeartbeatReply::default();
        let mut reported = HashSet::new();
        for w in &hb.worlds {
            reported.insert(w.world_id.as_str());
            // Fences only grow, whatever this registry remembers.
            st.fence = st.fence.max(w.fence);
            match st.placements.get(&w.world_id).cloned() {
                // A copy held with an older fence than the world's last placement is stale.
                None if w.fence > 0 && w.fence < st.last_fence.get(&w.world_id).copied().unwrap_or(0) => {
                    reply.evict.push(w.world_id.clone());
                }
                None => {
                    let fence = st.place(&w.world_id, &hb.server_id, now_ms);
                    st.occupancy.insert(w.world_id.clone(), w.occupancy);
                    reply.fences.insert(w.world_id.clone(), fence);
                }
                Some(p) if p.server == hb.server_id => {
                    st.server_worlds.entry(hb.server_id.clone()).or_default().insert(w.world_id.clone());
                    st.occupancy.insert(w.world_id.clone(), w.occupancy);
                    if let Some(r) = st.reservations.get_mut(&w.world_id) {
                        for id in &w.joined {
                            r.remove(id);
                        }
                    }
                    reply.fences.insert(w.world_id.clone(), p.fence);
                }
                Some(_) => reply.evict.push(w.world_id.clone()),
            }
        }
        let unreported: Vec<String> = st
            .server_worlds
            .get(&hb.server_id)
            .map(|set| set.iter().filter(|w| !reported.contains(w.as_str())).cloned().collect())
            .unwrap_or_default();
        // A draining server that no longer reports a world has saved it and let it go.
        let draining = hb.state == ServerState::Draining;
        for w in unreported {
            let old = st.placements.get(&w).is_some_and(|p| p.placed_ms + self.timing.placement_grace_ms < now_ms);
            if draining || (old && st.live_reservations(&w, now_ms) == 0) {
                st.forget(&w);
            }
        }
        Ok(reply)
    }

    async fn reserve(&self, r: &Reserve<'_>) -> Result<Reserved, RegistryError> {
        let mut st = self.state.lock();
        let timeout = self.timing.server_timeout_ms;
        let Some(server) = st.servers.get(r.server).filter(|s| s.ready(r.now_ms, timeout)).cloned() else {
            return Ok(Reserved::Conflict(Conflict::ServerUnavailable));
        };
        let fence = match r.kind {
            ReserveKind::Seat { fence } => match st.placements.get(r.world) {
                Some(p) if p.server == r.server && p.fence == fence => fence,
                _ => return Ok(Reserved::Conflict(Conflict::WorldMoved)),
            },
            ReserveKind::Place => match st.placements.get(r.world).cloned() {
                Some(p) if p.server == r.server => p.fence,
                Some(p) if st.alive(&p.server, r.now_ms, timeout) => {
                    return Ok(Reserved::Conflict(Conflict::LiveElsewhere { server: p.server, fence: p.fence }));
                }
                existing => {
                    if existing.is_some() {
                        // Its server stopped reporting: the world moves.
                        st.forget(r.world);
                    }
                    let placed = st.server_worlds.get(r.server).map_or(0, HashSet::len);
                    if placed >= server.max_worlds as usize {
                        return Ok(Reserved::Conflict(Conflict::ServerFull));
                    }
                    st.place(r.world, r.server, r.now_ms)
                }
            },
        };
        let used = st.used(r.world, r.now_ms);
        if used >= server.world_capacity {
            return Ok(Reserved::Conflict(Conflict::WorldFull));
        }
        st.reservations.entry(r.world.to_owned()).or_default().insert(r.id.to_owned(), r.expires_ms);
        Ok(Reserved::Ok { fence, used: used + 1 })
    }

    async fn release(&self, world: &str, id: &str) -> Result<bool, RegistryError> {
        Ok(self.state.lock().reservations.get_mut(world).is_some_and(|r| r.remove(id).is_some()))
    }

    async fn snapshot(&self, now_ms: u64) -> Result<Snapshot, RegistryError> {
        let mut st = self.state.lock();
        let servers: Vec<ServerView> = st.servers.values().cloned().collect();
        let placed = st.server_worlds.iter().map(|(s, w)| (s.clone(), w.len() as u32)).collect();
        let all: Vec<(String, Placement)> = st.placements.iter().map(|(w, p)| (w.clone(), p.clone())).collect();
        let mut worlds = Vec::new();
        for (id, p) in all {
            let used = st.used(&id, now_ms);
            let capacity = st.servers.get(&p.server).map_or(0, |s| s.world_capacity);
            if used < capacity {
                worlds.push(WorldView { id, server: p.server, fence: p.fence, used });
            }
        }
        Ok(Snapshot { servers, placed, worlds })
    }

    async fn locate(&self, world: &str, now_ms: u64) -> Result<Option<WorldView>, RegistryError> {
        let mut st = self.state.lock();
        let Some(p) = st.placements.get(world).cloned() else { return Ok(None) };
        let used = st.used(world, now_ms);
        Ok(Some(WorldView { id: world.to_owned(), server: p.server, fence: p.fence, used }))
    }

    async fn purge(&self, before_ms: u64) -> Result<usize, RegistryError> {
        let mut st = self.state.lock();
        let gone: Vec<String> =
            st.servers.values().filter(|s| s.last_seen_ms < before_ms).map(|s| s.id.clone()).collect();
        for id in &gone {
            st.servers.remove(id);
            st.server_worlds.remove(id);
            let orphans: Vec<String> =
                st.placements.iter().filter(|(_, p)| p.server == *id).map(|(w, _)| w.clone()).collect();
            for w in orphans {
                st.forget(&w);
            }
        }
        Ok(gone.len())
    }

    async fn ping(&self) -> Result<(), RegistryError> {
        Ok(())
    }
}
