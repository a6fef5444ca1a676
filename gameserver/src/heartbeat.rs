//! Reporting to the allocator: every second, this server's state, its measured load and each
//! live world's occupancy, fence, joins, refused tickets and (when they changed) the bots holding
//! its seats. The answer renews the lease, tells the fences of the worlds and which other worlds
//! are placed here, and which worlds were placed elsewhere (those are evicted at once).
//!
//! The server knows a list of allocator URLs (replicas, or one address behind a load balancer):
//! each heartbeat goes to the one that answered last and, when that one fails, to the next in
//! turn within the same round — so one replica going away costs no lease.

use std::sync::Arc;
use std::time::Duration;

use arena_sdk::allocator_api::{Endpoints, Heartbeat, HeartbeatReply, ServerLoad, ServerState, WorldReport};
use arena_sdk::protocol::close;
use tokio_util::sync::CancellationToken;

use crate::config::AllocatorLink;
use crate::host::{Host, Lifecycle};
use crate::placement;

/// Longest wait for one allocator's answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// The heartbeat this server would send now, carrying `worlds`.
pub fn heartbeat(host: &Host, link: &AllocatorLink, endpoints: &Endpoints, worlds: Vec<WorldReport>) -> Heartbeat {
    let cfg = host.config();
    let load = host.load();
    let bots = host.metrics().connected_bots.get().max(0) as u32;
    Heartbeat {
        server_id: cfg.server_id.clone(),
        region: link.region.clone(),
        endpoints: endpoints.clone(),
        state: if host.lifecycle() == Lifecycle::Ready { ServerState::Ready } else { ServerState::Draining },
        max_worlds: cfg.max_worlds as u32,
        world_capacity: cfg.world.capacity as u32,
        worlds,
        load: Some(ServerLoad {
            tick: load.tick.clamp(0.0, arena_sdk::allocator_api::MAX_TICK_LOAD),
            bots,
            room: crate::load::room(&load, &cfg.load, bots, host.admission().overloaded()),
        }),
        version: cfg.version.clone(),
    }
}

/// An HTTP client for heartbeats.
fn client() -> Option<reqwest::Client> {
    match reqwest::Client::builder().timeout(ATTEMPT_TIMEOUT).connect_timeout(ATTEMPT_TIMEOUT).build() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; not reporting to the allocator");
            None
        }
    }
}

/// Post `hb` to the allocators, starting with `*current`, until one answers; it becomes current.
async fn post(
    client: &reqwest::Client,
    link: &AllocatorLink,
    current: &mut usize,
    hb: &Heartbeat,
) -> Result<HeartbeatReply, String> {
    let n = link.urls.len().max(1);
    let mut errors = Vec::new();
    for i in 0..n {
        let idx = (*current + i) % n;
        let Some(base) = link.urls.get(idx) else { break };
        let url = format!("{}/v1/servers/heartbeat", base.trim_end_matches('/'));
        let sent = client.post(&url).bearer_auth(&link.server_key).json(hb).send().await;
        let reply = match sent {
            Ok(resp) if resp.status().is_success() => resp.json::<HeartbeatReply>().await.map_err(|e| e.to_string()),
            Ok(resp) => {
                let status = resp.status();
                let body: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
                Err(format!("{status}: {body}"))
            }
            Err(e) => Err(e.to_string()),
        };
        match reply {
            Ok(r) => {
                *current = idx;
                return Ok(r);
            }
            Err(e) => errors.push(format!("{base}: {e}")),
        }
    }
    Err(errors.join("; "))
}

/// How the drain and the heartbeat task meet: `tell` is cancelled when the drain starts, and
/// the task cancels `told` once the allocator has its answer to the draining heartbeat (or every
/// allocator failed to take it).
#[derive(Debug, Clone, Default)]
pub struct DrainSignal {
    pub tell: CancellationToken,
    pub told: CancellationToken,
}

/// Report every `link.every` until `stop`; report at once when the drain starts.
pub async fn run(
    host: Arc<Host>,
    link: AllocatorLink,
    endpoints: Endpoints,
    stop: CancellationToken,
    drain: DrainSignal,
) {
    let Some(client) = client() else {
        // Without heartbeats there is no lease: the server serves nothing. Keep the task (and
        // the reason in the log) until shutdown.
        stop.cancelled().await;
        return;
    };
    let mut tick = tokio::time::interval(link.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining_told = false;
    let mut failures = 0u32;
    let mut current = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = drain.tell.cancelled(), if !draining_told => draining_told = true,
            () = stop.cancelled() => return,
        }
        let sent_at = host.now();
        let (reports, receipts) = placement::reports(host.worlds(), sent_at);
        let hb = heartbeat(&host, &link, &endpoints, reports);
        match post(&client, &link, &mut current, &hb).await {
            Ok(reply) => {
                if failures > 0 {
                    tracing::info!(after = failures, "heartbeats reach the allocator again");
                }
                failures = 0;
                host.metrics().heartbeats.inc();
                placement::acknowledged(receipts, host.now());
                apply(&host, sent_at, &reply);
            }
            Err(e) => {
                failures += 1;
                host.metrics().heartbeat_failures.inc();
                // Log the first failure and then every 30th, not every second.
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(error = %e, failures, "heartbeat to the allocator failed");
                }
            }
        }
        if draining_told {
            drain.told.cancel();
        }
    }
}

/// Take in the allocator's answer to a heartbeat sent at `sent_at`.
pub fn apply(host: &Host, sent_at: Duration, reply: &HeartbeatReply) {
    if reply.lease_ms > 0 {
        host.renew_lease(sent_at, Duration::from_millis(reply.lease_ms));
    } else {
        tracing::warn!("the allocator granted no lease; this server serves nothing until it does");
    }
    host.placement().lock().update(reply);
    for (world, fence) in &reply.fences {
        host.worlds().confirm(world, *fence);
    }
    for world in &reply.evict {
        host.evict(world, close::WORLD_MOVED, "the world moved to another server");
    }
}

/// Tell the allocator this server is gone: draining, holding no world, so its worlds can be
/// placed elsewhere at once (their final snapshots are written by now).
pub async fn send_farewell(host: &Host, link: &AllocatorLink, endpoints: &Endpoints) {
    let Some(client) = client() else { return };
    let hb = Heartbeat { state: ServerState::Draining, ..heartbeat(host, link, endpoints, Vec::new()) };
    let mut current = 0;
    if let Err(e) = post(&client, link, &mut current, &hb).await {
        tracing::warn!(error = %e, "could not tell the allocator this server is gone");
    }
}
