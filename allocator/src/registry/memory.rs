//! The in-process registry: the embedded default for a single allocator. One lock makes every
//! operation atomic; the rules are those of the module above, exactly as the Redis scripts apply
//! them, on the registry's own clock ([`RegistryClock`]). Expiring entries are dropped when met
//! and swept by [`Registry::purge`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arena_sdk::allocator_api::{Heartbeat, HeartbeatReply, ServerState};
use parking_lot::Mutex;

use super::schema::{RegistryClock, SystemClock, Timing};
use super::{Conflict, Located, Registry, RegistryError, Reserve, ReserveKind, Reserved};
use crate::snapshot::{Liveness, ServerView, Snapshot, WorldView};

#[derive(Debug, Clone)]
struct Placement {
    server: String,
    fence: u64,
    placed_ms: u64,
}

#[derive(Debug, Clone)]
struct BotReservation {
    world: String,
    id: String,
    expires_ms: u64,
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
    /// world → (the fence of its last placement, until when it is remembered)
    last_fence: HashMap<String, (u64, u64)>,
    bot_res: HashMap<String, BotReservation>,
    /// bot → (the world it holds a seat in, until when)
    bot_seat: HashMap<String, (String, u64)>,
    /// world → (the bots its server last listed, until when)
    world_bots: HashMap<String, (HashSet<String>, u64)>,
    hb_last: u64,
    resume_ms: u64,
    started: Option<u64>,
}

impl State {
    fn live_reservations(&mut self, world: &str, now: u64) -> u32 {
        match self.reservations.get_mut(world) {
            Some(r) => {
                r.retain(|_, exp| *exp > now);
                r.len() as u32
            }
            None => 0,
        }
    }

    fn used(&mut self, world: &str, now: u64) -> u32 {
        self.occupancy.get(world).copied().unwrap_or(0) + self.live_reservations(world, now)
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

    fn next_fence(&mut self, now_us: u64) -> u64 {
        self.fence = (self.fence + 1).max(now_us);
        self.fence
    }

    fn kept_seats(&self, world: &str, now: u64) -> u32 {
        self.world_bots.get(world).filter(|(_, exp)| *exp > now).map_or(0, |(b, _)| b.len() as u32)
    }

    fn place(&mut self, world: &str, server: &str, now: u64, now_us: u64, t: &Timing) -> u64 {
        let fence = self.next_fence(now_us);
        self.last_fence.insert(world.to_owned(), (fence, now + t.lastfence_ttl_ms));
        self.placements.insert(world.to_owned(), Placement { server: server.to_owned(), fence, placed_ms: now });
        self.server_worlds.entry(server.to_owned()).or_default().insert(world.to_owned());
        let kept = self.kept_seats(world, now);
        self.occupancy.insert(world.to_owned(), kept);
        fence
    }

    fn liveness(&self, now: u64, t: &Timing) -> Liveness {
        Liveness { now_ms: now, resume_ms: self.resume_ms, timeout_ms: t.server_timeout_ms }
    }

    /// The registry has heard from no server for half a timeout.
    fn silent(&self, now: u64, t: &Timing) -> bool {
        self.hb_last > 0 && now.saturating_sub(self.hb_last) > t.server_timeout_ms / 2
    }

    fn alive(&self, server: &str, now: u64, t: &Timing) -> Option<&ServerView> {
        let l = self.liveness(now, t);
        self.servers.get(server).filter(|s| s.alive(l))
    }

    /// The world the bot holds a seat in, and the world and id of its live reservation.
    fn bot_holds(&self, bot: &str, now: u64) -> (Option<String>, Option<(String, String)>) {
        let seat = self.bot_seat.get(bot).filter(|(_, exp)| *exp > now).map(|(w, _)| w.clone());
        let res = self.bot_res.get(bot).filter(|r| r.expires_ms > now).map(|r| (r.world.clone(), r.id.clone()));
        (seat, res)
    }

    fn drop_bot_res(&mut self, bot: &str, world: &str, id: &str) {
        if self.bot_res.get(bot).is_some_and(|r| r.world == world && r.id == id) {
            self.bot_res.remove(bot);
        }
    }
}

#[derive(Debug)]
pub struct MemoryRegistry {
    state: Mutex<State>,
    timing: Timing,
    clock: Arc<dyn RegistryClock>,
}

impl MemoryRegistry {
    /// An empty registry on the system clock.
    pub fn new(timing: Timing) -> Self {
        Self::with_clock(timing, Arc::new(SystemClock))
    }

    /// An empty registry on `clock`.
    pub fn with_clock(timing: Timing, clock: Arc<dyn RegistryClock>) -> Self {
        MemoryRegistry { state: Mutex::new(State::default()), timing, clock }
    }

    fn now(&self) -> (u64, u64) {
        let ms = self.clock.now_ms();
        (ms, self.clock.now_us().max(ms * 1000))
    }
}

impl Registry for MemoryRegistry {
    async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatReply, RegistryError> {
        let (now, now_us) = self.now();
        let t = &self.timing;
        if let Some(w) = hb.worlds.iter().find(|w| w.fence > now_us.saturating_add(t.fence_ahead_us)) {
            return Err(RegistryError::FenceAhead(w.world_id.clone()));
        }
        let mut st = self.state.lock();
        st.started.get_or_insert(now);
        if st.hb_last > 0 && now.saturating_sub(st.hb_last) > t.server_timeout_ms / 2 {
            st.resume_ms = now;
        }
        st.hb_last = now;
        st.servers.insert(hb.server_id.clone(), ServerView::from_heartbeat(hb, now));
        let mut reply = HeartbeatReply { lease_ms: t.lease_ms(), ..HeartbeatReply::default() };
        let mut reported = HashSet::new();
        for w in &hb.worlds {
            reported.insert(w.world_id.as_str());
            // Fences only grow, whatever this registry remembers.
            st.fence = st.fence.max(w.fence);
            let last = st.last_fence.get(&w.world_id).filter(|(_, exp)| *exp > now).map_or(0, |(f, _)| *f);
            let mine = match st.placements.get(&w.world_id).cloned() {
                // A copy held with an older fence than the world's last placement is stale.
                None if w.fence > 0 && w.fence < last => {
                    reply.evict.push(w.world_id.clone());
                    false
                }
                None => {
                    let fence = st.place(&w.world_id, &hb.server_id, now, now_us, t);
                    st.occupancy.insert(w.world_id.clone(), w.occupancy);
                    reply.fences.insert(w.world_id.clone(), fence);
                    true
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
                    true
                }
                Some(_) => {
                    reply.evict.push(w.world_id.clone());
                    false
                }
            };
            if !mine {
                continue;
            }
            for r in &w.refused {
                if let Some(res) = st.reservations.get_mut(&w.world_id) {
                    res.remove(&r.nonce);
                }
                st.drop_bot_res(&r.bot, &w.world_id, &r.nonce);
            }
            if let Some(bots) = &w.bots {
                let listed: HashSet<String> = bots.iter().cloned().collect();
                for bot in &listed {
                    st.bot_seat.insert(bot.clone(), (w.world_id.clone(), now + t.seat_ttl_ms));
                    if let Some(res) = st.bot_res.get(bot).cloned()
                        && res.world == w.world_id
                    {
                        if let Some(r) = st.reservations.get_mut(&w.world_id) {
                            r.remove(&res.id);
                        }
                        st.bot_res.remove(bot);
                    }
                }
                let before = st.world_bots.remove(&w.world_id).map(|(b, _)| b).unwrap_or_default();
                for bot in before.difference(&listed) {
                    if st.bot_seat.get(bot).is_some_and(|(world, _)| *world == w.world_id) {
                        st.bot_seat.remove(bot);
                    }
                }
                if !listed.is_empty() {
                    st.world_bots.insert(w.world_id.clone(), (listed, now + t.seat_ttl_ms));
                }
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
            let Some(p) = st.placements.get(&w).cloned() else { continue };
            if draining || (p.placed_ms + t.placement_grace_ms < now && st.live_reservations(&w, now) == 0) {
                st.forget(&w);
            } else {
                reply.placed.insert(w, p.fence);
            }
        }
        reply.watermark = st.fence;
        Ok(reply)
    }

    async fn reserve(&self, r: &Reserve<'_>) -> Result<Reserved, RegistryError> {
        let (now, now_us) = self.now();
        let t = self.timing;
        if now > r.deadline_ms {
            return Ok(Reserved::Conflict(Conflict::Late));
        }
        let mut st = self.state.lock();
        let started = *st.started.get_or_insert(now);

        // One seat per bot.
        let (seat, mut res) = st.bot_holds(r.bot, now);
        if let (Some((rw, rid)), Some(req)) = (&res, r.requested)
            && rw != req
            && seat.as_deref() != Some(rw.as_str())
        {
            // An unused reservation elsewhere gives way to the world the bot now asks for.
            if let Some(z) = st.reservations.get_mut(rw) {
                z.remove(rid);
            }
            st.bot_res.remove(r.bot);
            res = None;
        }
        let holds = seat.or(res.map(|(w, _)| w));
        if let Some(held) = &holds {
            if let Some(req) = r.requested
                && req != held
            {
                return Ok(Reserved::Conflict(Conflict::SeatElsewhere { world: held.clone() }));
            }
            if let Some(p) = st.placements.get(held).cloned() {
                match st.alive(&p.server, now, &t) {
                    Some(s) if s.state == ServerState::Ready => {
                        return Ok(Reserved::Held { world: held.clone(), server: p.server, fence: p.fence });
                    }
                    Some(_) => return Ok(Reserved::Conflict(Conflict::Moving)),
                    None if st.silent(now, &t) => return Ok(Reserved::Conflict(Conflict::Unheard)),
                    None => {}
                }
            }
            if r.kind != ReserveKind::Place || r.world != held {
                return Ok(Reserved::Conflict(Conflict::HeldUnplaced { world: held.clone() }));
            }
        }

        let l = st.liveness(now, &t);
        let unheard = st.silent(now, &t);
        if unheard && st.servers.get(r.server).is_none_or(|s| !s.alive(l)) {
            return Ok(Reserved::Conflict(Conflict::Unheard));
        }
        let Some(server) = st.servers.get(r.server).filter(|s| s.ready(l)).cloned() else {
            return Ok(Reserved::Conflict(Conflict::ServerUnavailable));
        };
        let fence = match r.kind {
            ReserveKind::Seat { fence } => match st.placements.get(r.world) {
                Some(p) if p.server == r.server && p.fence == fence => fence,
                _ => return Ok(Reserved::Conflict(Conflict::WorldMoved)),
            },
            ReserveKind::Place => match st.placements.get(r.world).cloned() {
                Some(p) if p.server == r.server => p.fence,
                Some(p) if st.alive(&p.server, now, &t).is_some() => {
                    return Ok(Reserved::Conflict(Conflict::LiveElsewhere { server: p.server, fence: p.fence }));
                }
                Some(_) if unheard => return Ok(Reserved::Conflict(Conflict::Unheard)),
                existing => {
                    if existing.is_some() {
                        // Its server stopped reporting: the world moves.
                        st.forget(r.world);
                    }
                    if r.requested.is_some() && now < started + t.warmup_ms() {
                        return Ok(Reserved::Conflict(Conflict::WarmingUp));
                    }
                    let placed = st.server_worlds.get(r.server).map_or(0, HashSet::len);
                    if placed >= server.max_worlds as usize {
                        return Ok(Reserved::Conflict(Conflict::ServerFull));
                    }
                    st.place(r.world, r.server, now, now_us, &t)
                }
            },
        };
        if holds.is_some() {
            // The bot's seat is kept in the world's saved state: it needs no new one.
            return Ok(Reserved::Held { world: r.world.to_owned(), server: r.server.to_owned(), fence });
        }
        let used = st.used(r.world, now);
        if used >= server.world_capacity {
            return Ok(Reserved::Conflict(Conflict::WorldFull));
        }
        let expires_ms = now + r.ttl_ms;
        st.reservations.entry(r.world.to_owned()).or_default().insert(r.id.to_owned(), expires_ms);
        st.bot_res
            .insert(r.bot.to_owned(), BotReservation { world: r.world.to_owned(), id: r.id.to_owned(), expires_ms });
        Ok(Reserved::Ok { fence, used: used + 1 })
    }

    async fn release(&self, world: &str, bot: &str, id: &str) -> Result<bool, RegistryError> {
        let mut st = self.state.lock();
        let removed = st.reservations.get_mut(world).is_some_and(|r| r.remove(id).is_some());
        st.drop_bot_res(bot, world, id);
        Ok(removed)
    }

    async fn snapshot(&self) -> Result<Snapshot, RegistryError> {
        let (now, _) = self.now();
        let mut st = self.state.lock();
        st.started.get_or_insert(now);
        let servers: Vec<ServerView> = st.servers.values().cloned().collect();
        let placed = st.server_worlds.iter().map(|(s, w)| (s.clone(), w.len() as u32)).collect();
        let all: Vec<(String, Placement)> = st.placements.iter().map(|(w, p)| (w.clone(), p.clone())).collect();
        let mut worlds = Vec::new();
        for (id, p) in all {
            let used = st.used(&id, now);
            let capacity = st.servers.get(&p.server).map_or(0, |s| s.world_capacity);
            if used < capacity {
                worlds.push(WorldView { id, server: p.server, fence: p.fence, used });
            }
        }
        Ok(Snapshot { now_ms: now, resume_ms: st.resume_ms, heard_ms: st.hb_last, servers, placed, worlds })
    }

    async fn locate(&self, world: Option<&str>, bot: Option<&str>) -> Result<Located, RegistryError> {
        let (now, _) = self.now();
        let mut st = self.state.lock();
        let mut out = Located::default();
        if let Some(world) = world
            && let Some(p) = st.placements.get(world).cloned()
        {
            let used = st.used(world, now);
            out.world = Some(WorldView { id: world.to_owned(), server: p.server, fence: p.fence, used });
        }
        if let Some(bot) = bot {
            let (seat, res) = st.bot_holds(bot, now);
            out.seat = seat;
            out.reservation = res.map(|(w, _)| w);
        }
        Ok(out)
    }

    async fn purge(&self, silence_ms: u64) -> Result<usize, RegistryError> {
        let (now, _) = self.now();
        let mut st = self.state.lock();
        let resume = st.resume_ms;
        let gone: Vec<String> = st
            .servers
            .values()
            .filter(|s| s.last_seen_ms.max(resume).saturating_add(silence_ms) < now)
            .map(|s| s.id.clone())
            .collect();
        for id in &gone {
            st.servers.remove(id);
            st.server_worlds.remove(id);
            let orphans: Vec<String> =
                st.placements.iter().filter(|(_, p)| p.server == *id).map(|(w, _)| w.clone()).collect();
            for w in orphans {
                st.forget(&w);
            }
        }
        // Everything that expires, swept.
        st.last_fence.retain(|_, (_, exp)| *exp > now);
        st.bot_res.retain(|_, r| r.expires_ms > now);
        st.bot_seat.retain(|_, (_, exp)| *exp > now);
        st.world_bots.retain(|_, (_, exp)| *exp > now);
        st.reservations.retain(|_, r| {
            r.retain(|_, exp| *exp > now);
            !r.is_empty()
        });
        Ok(gone.len())
    }

    async fn ping(&self) -> Result<(), RegistryError> {
        Ok(())
    }

    fn timing(&self) -> Timing {
        self.timing
    }
}
