//! Where servers run. The reconciler decides; a backend carries it out — start a server of a
//! template, drain it, kill it — and says what each of its servers is doing. The local backend
//! runs processes on this machine (`local.rs`); a Kubernetes backend runs pods.

use std::future::Future;

use crate::spec::ServerTemplate;

/// A server to start.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerRequest {
    /// Its server id (unique in the fleet).
    pub id: String,
    pub region: String,
    pub template: ServerTemplate,
    /// Allocator URLs it reports to.
    pub allocators: Vec<String>,
}

/// What a backend knows of one of its servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Process {
    /// Started, not serving yet.
    Starting,
    /// Serving; its WebSocket URL.
    Running { ws_url: String },
    /// Gone: exited by itself (`code` when it returned one) or was killed.
    Exited { code: Option<i32> },
}

/// Runs servers somewhere.
pub trait Backend: Send {
    /// Start a server; it shows as [`Process::Starting`] until it serves.
    fn start(&mut self, req: &ServerRequest) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Ask a server to drain: stop taking bots, save its worlds, hand them back, exit.
    fn drain(&mut self, id: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Stop a server at once.
    fn kill(&mut self, id: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Every server it runs or ran and has not forgotten, with what it is doing.
    fn observe(&mut self) -> impl Future<Output = Vec<(String, Process)>> + Send;
    /// Forget a server that exited.
    fn forget(&mut self, id: &str);
}
