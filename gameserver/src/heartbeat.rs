//! Reporting to the allocator: every second, this server's state and each live world's
//! occupancy, fence and the reservations its bots used; the answer tells the server the fences
//! of its worlds and which worlds were placed elsewhere (those are evicted at once).

use std::sync::Arc;
use std::time::Duration;

use arena_sdk::allocator_api::{Endpoints, Heartbeat, HeartbeatReply, ServerState};
use tokio::sync::watch;

use crate::host::{Host, Lifecycle};
use crate::server::until_true;

/// How this server reaches its allocator.
#[derive(Debug, Clone)]
pub struct AllocatorLink {
    /// Base URL, e.g. `http://127.0.0.1:7100`.
    pub url: String,
    pub region: String,
    /// The WebSocket URL bots should use; default `ws://<ws-addr>/ws`.
    pub public_ws_url: Option<String>,
    /// Bearer key for `POST /v1/servers/heartbeat`.
    pub server_key: String,
    pub every: Duration,
}

/// The heartbeat this server would send now.
pub fn heartbeat(host: &Host, link: &AllocatorLink, ws_url: &str) -> Heartbeat {
    let cfg = host.config();
    Heartbeat {
        server_id: cfg.server_id.clone(),
        region: link.region.clone(),
        endpoints: Endpoints { ws: ws_url.to_owned() },
        state: if host.lifecycle() == Lifecycle::Ready { ServerState::Ready } else { ServerState::Draining },
        max_worlds: cfg.max_worlds as u32,
        world_capacity: cfg.world.capacity as u32,
        worlds: host.world_reports(),
    }
}

/// Report every `link.every` until `stop`; report at once when the drain starts.
pub async fn run(host: Arc<Host>, link: AllocatorLink, ws_url: String, mut stop: watch::Receiver<bool>) {
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(2)).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; not reporting to the allocator");
            return;
        }
    };
    let url = format!("{}/v1/servers/heartbeat", link.url.trim_end_matches('/'));
    let mut tick = tokio::time::interval(link.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain = host.drain_signal();
    let mut draining_told = false;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = until_true(&mut drain), if !draining_told => draining_told = true,
            () = until_true(&mut stop) => return,
        }
        let hb = heartbeat(&host, &link, &ws_url);
        let sent = client.post(&url).bearer_auth(&link.server_key).json(&hb).send().await;
        let reply = match sent {
            Ok(resp) if resp.status().is_success() => resp.json::<HeartbeatReply>().await.map_err(|e| e.to_string()),
            Ok(resp) => {
                let status = resp.status();
                Err(format!("{status}: {}", resp.text().await.unwrap_or_default()))
            }
            Err(e) => Err(e.to_string()),
        };
        match reply {
            Ok(reply) => {
                if failures > 0 {
                    tracing::info!(after = failures, "heartbeats reach the allocator again");
                }
                failures = 0;
                host.apply_heartbeat_reply(&reply);
            }
            Err(e) => {
                failures += 1;
                // Log the first failure and then every 30th, not every second.
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(error = %e, failures, "heartbeat to the allocator failed");
                }
            }
        }
    }
}

/// Tell the allocator this server is gone: draining, holding no world, so its worlds can be
/// placed elsewhere at once (their final snapshots are written by now).
pub async fn send_farewell(host: &Host, link: &AllocatorLink) {
    let Ok(client) = reqwest::Client::builder().timeout(Duration::from_secs(2)).build() else { return };
    let cfg = host.config();
    let hb = Heartbeat {
        server_id: cfg.server_id.clone(),
        region: link.region.clone(),
        endpoints: Endpoints { ws: link.public_ws_url.clone().unwrap_or_else(|| format!("ws://{}/ws", cfg.ws_addr)) },
        state: ServerState::Draining,
        max_worlds: cfg.max_worlds as u32,
        world_capacity: cfg.world.capacity as u32,
        worlds: Vec::new(),
    };
    let url = format!("{}/v1/servers/heartbeat", link.url.trim_end_matches('/'));
    if let Err(e) = client.post(url).bearer_auth(&link.server_key).json(&hb).send().await {
        tracing::warn!(error = %e, "could not tell the allocator this server is gone");
    }
}
