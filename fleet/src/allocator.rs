//! The fleet's link to the allocator: its view of every server (what the policies size by) and
//! the farewell of a server that died (so its worlds move at once). Shared by the local
//! controller and the Kubernetes operator.

use std::time::Duration;

use arena_sdk::allocator_api::{Endpoints, Heartbeat, ServerState, ServerSummary};

use crate::spec::ServerTemplate;

/// The allocator's view must answer within this.
pub const VIEW_TIMEOUT: Duration = Duration::from_secs(2);

/// The allocator replicas a fleet reads from and reports to.
#[derive(Debug, Clone)]
pub struct AllocatorLink {
    pub urls: Vec<String>,
    /// A caller key: reads `GET /v1/servers`.
    pub key: String,
    /// A server key: sends a dead server's farewell (none: the allocator waits for its server
    /// timeout instead).
    pub server_key: Option<String>,
    http: reqwest::Client,
}

impl AllocatorLink {
    pub fn new(urls: Vec<String>, key: String, server_key: Option<String>) -> Self {
        let http =
            reqwest::Client::builder().timeout(VIEW_TIMEOUT).connect_timeout(VIEW_TIMEOUT).build().unwrap_or_default();
        AllocatorLink { urls, key, server_key, http }
    }

    /// The allocator's view of every server, from the first replica that answers.
    pub async fn view(&self) -> Option<Vec<ServerSummary>> {
        for url in &self.urls {
            let got = async {
                let r = self.http.get(format!("{url}/v1/servers")).bearer_auth(&self.key).send().await.ok()?;
                if !r.status().is_success() {
                    return None;
                }
                r.json::<Vec<ServerSummary>>().await.ok()
            };
            if let Some(v) = got.await {
                return Some(v);
            }
        }
        None
    }

    /// Tell the allocator that server `id` is gone — draining and holding no world, the
    /// farewell a draining server sends itself, sent for it. Whether a replica took it.
    pub async fn farewell(&self, id: &str, region: &str, ws_url: &str, template: &ServerTemplate) -> bool {
        let Some(key) = &self.server_key else { return false };
        let hb = Heartbeat {
            server_id: id.to_owned(),
            region: region.to_owned(),
            endpoints: Endpoints::websocket(ws_url.to_owned()),
            state: ServerState::Draining,
            max_worlds: template.max_worlds,
            world_capacity: template.world_capacity,
            worlds: Vec::new(),
            load: None,
            version: Some(template.version.clone()),
        };
        for url in &self.urls {
            let sent = self.http.post(format!("{url}/v1/servers/heartbeat")).bearer_auth(key).json(&hb).send().await;
            match sent {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) => {
                    tracing::warn!(server = id, status = %r.status(), "the allocator refused the farewell of a dead server")
                }
                Err(e) => {
                    tracing::warn!(server = id, error = %e, "the farewell of a dead server did not reach the allocator")
                }
            }
        }
        false
    }
}
