//! The allocation flow: decide on the index, reserve atomically in the registry, retry
//! elsewhere on conflict, sign the ticket.
//!
//! Several replicas share one registry but each decides on its own index, refreshed a few times a
//! second; two replicas may pick the same last seat. The registry's reservation settles it, the
//! loser learns why (world full, server gone, world moved) and tries the next candidate. A caller
//! never sees a contention error: after a bounded number of attempts it gets `429` like any
//! request that finds no room.
//!
//! One seat per bot: the registry answers a bot that holds a seat (or a live reservation) with
//! that seat, whatever the index chose, and the bot gets a ticket for it — also when its world is
//! full, and after its world moved. Every registry call has a deadline; a registry that does not
//! answer, or an index too old to trust, is a `503`, never a `429`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arena_sdk::allocator_api::{Allocation, AllocationRequest, Endpoints, FieldError, Heartbeat, HeartbeatReply};
use arena_sdk::ticket::{Grant, TicketKey, mint_with_nonce, new_nonce};
use parking_lot::Mutex;

use crate::metrics::Metrics;
use crate::policy::{Avoid, Decision, Unavailable, Want, choose_for};
use crate::registry::{Conflict, Registry, RegistryError, Reserve, ReserveKind, Reserved};
use crate::snapshot::{Index, Liveness};

/// How allocations are made.
#[derive(Debug, Clone)]
pub struct AllocationRules {
    /// An unused reservation (and its ticket) expires after this.
    pub reservation_ttl: Duration,
    /// Attempts before giving up with `429`.
    pub max_attempts: u32,
    /// Regions the fleet has; others are refused. Empty: the regions servers report.
    pub regions: Vec<String>,
    /// Deadline of every registry call.
    pub registry_timeout: Duration,
    /// An index older than this is not trusted to say "no room": the answer is `503`.
    pub stale_after: Duration,
}

impl Default for AllocationRules {
    fn default() -> Self {
        AllocationRules {
            reservation_ttl: Duration::from_secs(15),
            max_attempts: 16,
            regions: Vec::new(),
            registry_timeout: Duration::from_secs(1),
            stale_after: Duration::from_millis(1500),
        }
    }
}

/// Why an allocation was not made.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error(transparent)]
    BadRequest(#[from] FieldError),
    #[error("no region in the preference has room")]
    NoCapacity,
    #[error("the world is full")]
    WorldFull,
    #[error("the world is moving to another server; retry shortly")]
    WorldMoving,
    #[error("the world's server is past its tick budget; retry shortly")]
    WorldBusy,
    #[error("bot holds a seat in world {0}: leave it first (or wait until its seat is freed)")]
    SeatElsewhere(String),
    #[error("registry unavailable: {0}")]
    Registry(#[from] RegistryError),
    #[error("the registry's view is {0:?} old; retry shortly")]
    Stale(Duration),
    #[error("the registry started a moment ago and does not place named worlds yet; retry shortly")]
    WarmingUp,
    #[error("the registry has not heard from any server lately; retry shortly")]
    Unheard,
    #[error("could not sign the ticket: {0}")]
    Ticket(String),
}

/// The index and when it was taken.
#[derive(Debug, Default)]
struct Indexed {
    index: Index,
    at: Option<Instant>,
}

pub struct Allocator<R> {
    registry: R,
    rules: AllocationRules,
    signing_key: TicketKey,
    index: Mutex<Indexed>,
    metrics: Arc<Metrics>,
}

impl<R> std::fmt::Debug for Allocator<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocator").field("rules", &self.rules).finish_non_exhaustive()
    }
}

impl<R: Registry> Allocator<R> {
    pub fn new(registry: R, rules: AllocationRules, signing_key: TicketKey, metrics: Arc<Metrics>) -> Self {
        Allocator { registry, rules, signing_key, index: Mutex::new(Indexed::default()), metrics }
    }

    pub fn registry(&self) -> &R {
        &self.registry
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn rules(&self) -> &AllocationRules {
        &self.rules
    }

    /// Run a registry call under the deadline.
    async fn call<T>(&self, f: impl Future<Output = Result<T, RegistryError>>) -> Result<T, RegistryError> {
        let limit = self.rules.registry_timeout;
        let r = tokio::time::timeout(limit, f).await.unwrap_or(Err(RegistryError::Timeout(limit)));
        if r.is_err() {
            self.metrics.registry_errors.inc();
        }
        r
    }

    /// Liveness on the registry's clock, as of now.
    fn liveness(&self, ix: &Indexed) -> Liveness {
        let elapsed = ix.at.map_or(0, |t| t.elapsed().as_millis() as u64);
        Liveness {
            now_ms: ix.index.now_ms + elapsed,
            resume_ms: ix.index.resume_ms,
            timeout_ms: self.registry.timing().server_timeout_ms,
        }
    }

    /// Why this index cannot be trusted to say there is no room, if it cannot: it is too old,
    /// or the registry had heard from no server lately when it was taken (it was out of reach
    /// itself, and the servers have not reported since).
    fn distrust(&self, ix: &Indexed, l: Liveness) -> Option<AllocError> {
        let Some(at) = ix.at else { return Some(AllocError::Stale(Duration::MAX)) };
        if at.elapsed() > self.rules.stale_after {
            return Some(AllocError::Stale(at.elapsed()));
        }
        let heard = ix.index.heard_ms;
        (heard > 0 && l.now_ms.saturating_sub(heard) > l.timeout_ms / 2).then_some(AllocError::Unheard)
    }

    /// How old the index is (`None`: never built).
    pub fn index_age(&self) -> Option<Duration> {
        self.index.lock().at.map(|t| t.elapsed())
    }

    /// Rebuild the index from the registry.
    pub async fn refresh(&self) -> Result<(), RegistryError> {
        let snap = self.call(self.registry.snapshot()).await?;
        let fresh = Indexed { index: Index::build(&snap), at: Some(Instant::now()) };
        let l = self.liveness(&fresh);
        self.metrics.observe_index(&fresh.index, l);
        *self.index.lock() = fresh;
        Ok(())
    }

    /// Read the current index with its liveness.
    pub fn with_index<T>(&self, f: impl FnOnce(&Index, Liveness) -> T) -> T {
        let ix = self.index.lock();
        let l = self.liveness(&ix);
        f(&ix.index, l)
    }

    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatReply, AllocError> {
        hb.validate()?;
        let reply = self.call(self.registry.heartbeat(hb)).await.map_err(|e| match e {
            RegistryError::FenceAhead(world) => AllocError::BadRequest(FieldError {
                field: "worlds.fence",
                message: format!("world {world}: fence ahead of the registry's clock"),
            }),
            other => AllocError::Registry(other),
        })?;
        self.metrics.heartbeats.inc();
        Ok(reply)
    }

    /// Cancel an unused reservation by its allocation id (`world~bot~nonce`).
    pub async fn release(&self, allocation_id: &str) -> Result<bool, AllocError> {
        let mut parts = allocation_id.splitn(3, '~');
        let (Some(world), Some(bot), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return Ok(false);
        };
        Ok(self.call(self.registry.release(world, bot, id)).await?)
    }

    fn check_regions(&self, regions: &[String]) -> Result<(), FieldError> {
        for r in regions {
            let known = if self.rules.regions.is_empty() {
                self.index.lock().index.has_region(r)
            } else {
                self.rules.regions.contains(r)
            };
            if !known {
                return Err(FieldError { field: "regions", message: format!("unknown region {r:?}") });
            }
        }
        Ok(())
    }

    /// Find a seat for the request (the bot's own, if it holds one), reserve it and sign a ticket.
    pub async fn allocate(&self, req: &AllocationRequest) -> Result<Allocation, AllocError> {
        let regions = req.validate()?;
        self.check_regions(&regions)?;
        // The world the decisions aim at, and whether the bot holds a seat there.
        let mut target = req.world_id.clone();
        let mut holds = false;
        if let Some(world) = &req.world_id {
            // The index lists open worlds only and may be a moment old: ask where this one is,
            // and where the bot sits.
            let found = self.call(self.registry.locate(Some(world), Some(&req.bot_id))).await?;
            // A seat elsewhere stays the bot's; a reservation elsewhere gives way (the registry
            // drops it when this request reserves).
            if let Some(other) = found.seat.as_ref().filter(|w| *w != world) {
                return Err(AllocError::SeatElsewhere(other.clone()));
            }
            holds = found.holds() == Some(world.as_str());
            let mut ix = self.index.lock();
            match found.world {
                Some(w) => ix.index.locate(&w.id, &w.server, w.fence, w.used),
                None => ix.index.remove_world(world),
            }
        }
        let mut avoid = Avoid::default();
        let mut last = Unavailable::NoCapacity;
        let mut checked_held = false;
        for attempt in 0..self.rules.max_attempts {
            // Many conflicts in a row mean this replica's index is far behind: look again (rare;
            // the periodic refresh usually keeps it close enough).
            if attempt == self.rules.max_attempts / 2 {
                self.refresh().await?;
            }
            let want = Want { regions: &regions, world: target.as_deref(), scheduling: req.scheduling };
            let decided = {
                let mut guard = self.index.lock();
                let l = self.liveness(&guard);
                let distrust = self.distrust(&guard, l);
                let ix = &mut guard.index;
                match choose_for(ix, want, l, &avoid, holds) {
                    // Fence 0: a world this replica is placing right now, not confirmed yet.
                    // Placing is idempotent, so ask to place it too rather than guess its fence.
                    Decision::Seat { world, server, fence: 0 } => Ok((world, server, ReserveKind::Place)),
                    Decision::Seat { world, server, fence } => Ok((world, server, ReserveKind::Seat { fence })),
                    Decision::Place { world, server } => {
                        Ok((world.unwrap_or_else(|| format!("w-{}", new_nonce())), server, ReserveKind::Place))
                    }
                    // "No room" from a view that cannot be trusted is not an answer.
                    Decision::Unavailable(Unavailable::NoCapacity) if distrust.is_some() => {
                        return Err(distrust.unwrap_or(AllocError::Unheard));
                    }
                    Decision::Unavailable(u) => Err(u),
                }
                .inspect(|(world, server, kind)| {
                    // Counted before the registry answers: concurrent requests spread over the
                    // remaining seats instead of all racing for this one.
                    let fence = match kind {
                        ReserveKind::Seat { fence } => *fence,
                        ReserveKind::Place => 0,
                    };
                    if !holds {
                        ix.count_pending_seat(world, server, fence);
                    }
                })
            };
            let (world, server, kind) = match decided {
                Ok(d) => d,
                Err(u) => {
                    last = u;
                    // Before saying "no room": a bot that holds a seat needs none.
                    if !checked_held && target.is_none() {
                        checked_held = true;
                        if let Some(w) = self.call(self.registry.locate(None, Some(&req.bot_id))).await?.holds_owned() {
                            target = Some(w);
                            holds = true;
                            continue;
                        }
                    }
                    break;
                }
            };
            let id = new_nonce();
            // The registry does nothing for a call that reaches it after the caller gave up.
            let deadline_ms = self.with_index(|_, l| l.now_ms) + (self.rules.registry_timeout.as_millis() as u64) + 250;
            let reserve = Reserve {
                world: &world,
                server: &server,
                kind,
                id: &id,
                bot: &req.bot_id,
                requested: target.as_deref(),
                ttl_ms: self.rules.reservation_ttl.as_millis() as u64,
                deadline_ms,
            };
            let outcome = match self.call(self.registry.reserve(&reserve)).await {
                Ok(o) => o,
                Err(e) => {
                    if !holds {
                        self.index.lock().index.forget_pending_seat(&world);
                    }
                    return Err(e.into());
                }
            };
            match outcome {
                Reserved::Ok { fence, used } => {
                    let (endpoints, region) = self.confirm(&world, &server, fence, Some(used));
                    return self.grant(req, world, server, region, endpoints, fence, id, false);
                }
                Reserved::Held { world: held, server: at, fence } => {
                    if !holds {
                        self.index.lock().index.forget_pending_seat(&world);
                    }
                    let (endpoints, region) = self.confirm(&held, &at, fence, None);
                    self.metrics.held_seats.inc();
                    return self.grant(req, held, at, region, endpoints, fence, new_nonce(), true);
                }
                Reserved::Conflict(c) => {
                    Metrics::count(&self.metrics.conflicts, "kind", conflict_name(&c));
                    let mut guard = self.index.lock();
                    let ix = &mut guard.index;
                    if !holds {
                        ix.forget_pending_seat(&world);
                    }
                    match c {
                        Conflict::WorldFull => {
                            ix.mark_full(&world);
                            avoid.worlds.insert(world);
                        }
                        Conflict::WorldMoved => {
                            avoid.worlds.insert(world);
                        }
                        Conflict::ServerUnavailable => {
                            ix.mark_unavailable(&server);
                            avoid.servers.insert(server);
                        }
                        Conflict::ServerFull => ix.mark_world_room_full(&server),
                        Conflict::LiveElsewhere { server, fence } => {
                            let used = ix.world(&world).map_or(0, |w| w.used);
                            ix.set_world(&world, &server, fence, used);
                        }
                        Conflict::HeldUnplaced { world } => {
                            // The bot's seat is in a world that is not live: place that one.
                            target = Some(world);
                            holds = true;
                        }
                        Conflict::SeatElsewhere { world } => return Err(AllocError::SeatElsewhere(world)),
                        Conflict::Moving => {
                            last = Unavailable::WorldMoving;
                            break;
                        }
                        Conflict::WarmingUp => return Err(AllocError::WarmingUp),
                        Conflict::Unheard => return Err(AllocError::Unheard),
                        Conflict::Late => {
                            return Err(AllocError::Registry(RegistryError::Timeout(self.rules.registry_timeout)));
                        }
                    }
                }
            }
        }
        if self.index_age().is_none() {
            return Err(AllocError::Stale(Duration::MAX));
        }
        Err(match last {
            Unavailable::NoCapacity => AllocError::NoCapacity,
            Unavailable::WorldFull => AllocError::WorldFull,
            Unavailable::WorldMoving => AllocError::WorldMoving,
            Unavailable::WorldBusy => AllocError::WorldBusy,
        })
    }

    /// Note a reservation (or a held seat) in the index; the server's endpoint and region.
    fn confirm(&self, world: &str, server: &str, fence: u64, used: Option<u32>) -> (Endpoints, String) {
        let mut guard = self.index.lock();
        let ix = &mut guard.index;
        match used {
            Some(used) => ix.confirm_seat(world, server, fence, used),
            None => {
                if ix.world(world).is_none_or(|w| w.server != server) {
                    ix.locate(world, server, fence, 0);
                }
            }
        }
        ix.server(server)
            .map(|s| (s.view.endpoints(), s.view.region.clone()))
            .unwrap_or_else(|| (Endpoints::websocket(String::new()), String::new()))
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(
        &self,
        req: &AllocationRequest,
        world: String,
        server: String,
        region: String,
        endpoints: Endpoints,
        fence: u64,
        id: String,
        existing: bool,
    ) -> Result<Allocation, AllocError> {
        let ttl = self.rules.reservation_ttl.as_secs().max(1);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let grant = Grant { world: &world, bot: &req.bot_id, server: Some(&server), fence: Some(fence) };
        let (ticket, claims) = mint_with_nonce(&self.signing_key, &grant, ttl, now, id.clone())
            .map_err(|e| AllocError::Ticket(e.to_string()))?;
        Ok(Allocation {
            allocation_id: format!("{world}~{}~{id}", req.bot_id),
            existing,
            world_id: world,
            region,
            server_id: server,
            endpoints,
            ticket,
            expires_at: claims.exp,
            fence,
        })
    }
}

fn conflict_name(c: &Conflict) -> &'static str {
    match c {
        Conflict::ServerUnavailable => "server_unavailable",
        Conflict::ServerFull => "server_full",
        Conflict::WorldFull => "world_full",
        Conflict::WorldMoved => "world_moved",
        Conflict::LiveElsewhere { .. } => "live_elsewhere",
        Conflict::HeldUnplaced { .. } => "held_unplaced",
        Conflict::SeatElsewhere { .. } => "seat_elsewhere",
        Conflict::Moving => "moving",
        Conflict::WarmingUp => "warming_up",
        Conflict::Unheard => "unheard",
        Conflict::Late => "late",
    }
}
