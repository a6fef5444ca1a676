//! The allocation flow: decide on the index, reserve atomically in the registry, retry
//! elsewhere on conflict, sign the ticket.
//!
//! Several replicas share one registry but each decides on its own index, refreshed a few times a
//! second; two replicas may pick the same last seat. The registry's reservation settles it, the
//! loser learns why (world full, server gone, world moved) and tries the next candidate. A caller
//! never sees a contention error: after a bounded number of attempts it gets `429` like any
//! request that finds no room.

use std::sync::Arc;
use std::time::Duration;

use arena_sdk::allocator_api::{Allocation, AllocationRequest, Endpoints, FieldError, Heartbeat, HeartbeatReply};
use arena_sdk::ticket::{Grant, TicketKey, mint_with_nonce, new_nonce};
use parking_lot::Mutex;

use crate::metrics::Metrics;
use crate::policy::{Avoid, Clock, Decision, Unavailable, Want, choose};
use crate::registry::{Conflict, Registry, RegistryError, Reserve, ReserveKind, Reserved};
use crate::snapshot::Index;
use crate::unix_ms;

/// How allocations are made.
#[derive(Debug, Clone)]
pub struct AllocationRules {
    /// A server not heard from for this long gets no seats.
    pub server_timeout: Duration,
    /// An unused reservation (and its ticket) expires after this.
    pub reservation_ttl: Duration,
    /// Attempts before giving up with `429`.
    pub max_attempts: u32,
    /// Regions the fleet has; others are refused. Empty: the regions servers report.
    pub regions: Vec<String>,
}

impl Default for AllocationRules {
    fn default() -> Self {
        AllocationRules {
            server_timeout: Duration::from_secs(5),
            reservation_ttl: Duration::from_secs(15),
            max_attempts: 16,
            regions: Vec::new(),
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
    #[error("registry unavailable: {0}")]
    Registry(#[from] RegistryError),
    #[error("could not sign the ticket: {0}")]
    Ticket(String),
}

pub struct Allocator<R> {
    registry: R,
    rules: AllocationRules,
    signing_key: TicketKey,
    index: Mutex<Index>,
    metrics: Arc<Metrics>,
}

impl<R> std::fmt::Debug for Allocator<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocator").field("rules", &self.rules).finish_non_exhaustive()
    }
}

impl<R: Registry> Allocator<R> {
    pub fn new(registry: R, rules: AllocationRules, signing_key: TicketKey, metrics: Arc<Metrics>) -> Self {
        Allocator { registry, rules, signing_key, index: Mutex::new(Index::default()), metrics }
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

    fn clock(&self) -> Clock {
        Clock { now_ms: unix_ms(), server_timeout_ms: self.rules.server_timeout.as_millis() as u64 }
    }

    /// Rebuild the index from the registry.
    pub async fn refresh(&self) -> Result<(), RegistryError> {
        let snap = self.registry.snapshot(unix_ms()).await?;
        let index = Index::build(&snap);
        self.metrics.observe_index(&index, self.clock());
        *self.index.lock() = index;
        Ok(())
    }

    /// Read the current index.
    pub fn with_index<T>(&self, f: impl FnOnce(&Index) -> T) -> T {
        f(&self.index.lock())
    }

    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatReply, AllocError> {
        hb.validate()?;
        let reply = self.registry.heartbeat(hb, unix_ms()).await?;
        self.metrics.heartbeats.inc();
        Ok(reply)
    }

    /// Cancel an unused reservation by its allocation id.
    pub async fn release(&self, allocation_id: &str) -> Result<bool, AllocError> {
        let Some((world, id)) = allocation_id.rsplit_once('.') else {
            return Ok(false);
        };
        Ok(self.registry.release(world, id).await?)
    }

    fn check_regions(&self, regions: &[String]) -> Result<(), FieldError> {
        for r in regions {
            let known = if self.rules.regions.is_empty() {
                self.index.lock().has_region(r)
            } else {
                self.rules.regions.contains(r)
            };
            if !known {
                return Err(FieldError { field: "regions", message: format!("unknown region {r:?}") });
            }
        }
        Ok(())
    }

    /// Find a seat for the request, reserve it and sign a ticket.
    pub async fn allocate(&self, req: &AllocationRequest) -> Result<Allocation, AllocError> {
        let regions = req.validate()?;
        self.check_regions(&regions)?;
        if let Some(world) = &req.world_id {
            // The index lists open worlds only and may be a moment old: ask where this one is.
            let found = self.registry.locate(world, unix_ms()).await?;
            let mut index = self.index.lock();
            match found {
                Some(w) => index.locate(&w.id, &w.server, w.fence, w.used),
                None => index.remove_world(world),
            }
        }
        let want = Want { regions: &regions, world: req.world_id.as_deref(), scheduling: req.scheduling };
        let mut avoid = Avoid::default();
        let mut last = Unavailable::NoCapacity;
        for attempt in 0..self.rules.max_attempts {
            // Many conflicts in a row mean this replica's index is far behind: look again (rare;
            // the periodic refresh usually keeps it close enough).
            if attempt == self.rules.max_attempts / 2 {
                self.refresh().await?;
            }
            let clock = self.clock();
            let (world, server, kind) = {
                let mut index = self.index.lock();
                let (world, server, kind) = match choose(&index, want, clock, &avoid) {
                    // Fence 0: a world this replica is placing right now, not confirmed yet.
                    // Placing is idempotent, so ask to place it too rather than guess its fence.
                    Decision::Seat { world, server, fence: 0 } => (world, server, ReserveKind::Place),
                    Decision::Seat { world, server, fence } => (world, server, ReserveKind::Seat { fence }),
                    Decision::Place { world, server } => {
                        (world.unwrap_or_else(|| format!("w-{}", new_nonce())), server, ReserveKind::Place)
                    }
                    Decision::Unavailable(u) => {
                        last = u;
                        break;
                    }
                };
                // Counted before the registry answers: concurrent requests spread over the
                // remaining seats instead of all racing for this one.
                let fence = match kind {
                    ReserveKind::Seat { fence } => fence,
                    ReserveKind::Place => 0,
                };
                index.count_pending_seat(&world, &server, fence);
                (world, server, kind)
            };
            let id = new_nonce();
            let expires_ms = clock.now_ms + self.rules.reservation_ttl.as_millis() as u64;
            let reserve = Reserve { world: &world, server: &server, kind, id: &id, now_ms: clock.now_ms, expires_ms };
            let outcome = match self.registry.reserve(&reserve).await {
                Ok(o) => o,
                Err(e) => {
                    self.index.lock().forget_pending_seat(&world);
                    return Err(e.into());
                }
            };
            match outcome {
                Reserved::Ok { fence, used } => {
                    let (ws, region) = {
                        let mut index = self.index.lock();
                        index.confirm_seat(&world, &server, fence, used);
                        let view = index.server(&server).map(|s| (s.view.ws.clone(), s.view.region.clone()));
                        view.unwrap_or_default()
                    };
                    return self.grant(req, world, server, region, ws, fence, id, clock.now_ms);
                }
                Reserved::Conflict(c) => {
                    Metrics::count(&self.metrics.conflicts, "kind", conflict_name(&c));
                    let mut index = self.index.lock();
                    index.forget_pending_seat(&world);
                    match c {
                        Conflict::WorldFull => {
                            index.mark_full(&world);
                            avoid.worlds.insert(world);
                        }
                        Conflict::WorldMoved => {
                            avoid.worlds.insert(world);
                        }
                        Conflict::ServerUnavailable => {
                            index.mark_unavailable(&server);
                            avoid.servers.insert(server);
                        }
                        Conflict::ServerFull => index.mark_world_room_full(&server),
                        Conflict::LiveElsewhere { server, fence } => {
                            let used = index.world(&world).map_or(0, |w| w.used);
                            index.set_world(&world, &server, fence, used);
                        }
                    }
                }
            }
        }
        Err(match last {
            Unavailable::NoCapacity => AllocError::NoCapacity,
            Unavailable::WorldFull => AllocError::WorldFull,
            Unavailable::WorldMoving => AllocError::WorldMoving,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(
        &self,
        req: &AllocationRequest,
        world: String,
        server: String,
        region: String,
        ws: String,
        fence: u64,
        id: String,
        now_ms: u64,
    ) -> Result<Allocation, AllocError> {
        let ttl = self.rules.reservation_ttl.as_secs().max(1);
        let grant = Grant { world: &world, bot: &req.bot_id, server: Some(&server), fence: Some(fence) };
        let (ticket, claims) = mint_with_nonce(&self.signing_key, &grant, ttl, now_ms / 1000, id.clone())
            .map_err(|e| AllocError::Ticket(e.to_string()))?;
        Ok(Allocation {
            allocation_id: format!("{world}.{id}"),
            world_id: world,
            region,
            server_id: server,
            endpoints: Endpoints { ws },
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
    }
}
