//! Gameserver settings and their defaults.

use std::net::SocketAddr;
use std::time::Duration;

use arena_sdk::ticket::TicketKey;

use crate::heartbeat::AllocatorLink;
use crate::persist::PersistConfig;
use crate::session::SessionLimits;
use crate::world::WorldConfig;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// WebSocket listen address; the endpoint is `ws://<ws_addr>/ws`.
    pub ws_addr: SocketAddr,
    /// HTTP listen address for `/healthz`, `/readyz` and `/metrics`.
    pub http_addr: SocketAddr,
    /// This server's id; tickets naming another server are refused.
    pub server_id: String,
    pub tick_hz: u32,
    /// Most worlds held at once.
    pub max_worlds: usize,
    /// Rules of each world (its `tick_hz` is overridden by [`ServerConfig::tick_hz`]).
    pub world: WorldConfig,
    /// Tick tasks the worlds are spread over.
    pub shards: usize,
    /// How long a dropped bot keeps its seat.
    pub resume_grace: Duration,
    /// How long an empty world stays loaded.
    pub idle_unload: Duration,
    /// How long a client may be unable to take updates before it is disconnected.
    pub slow_client: Duration,
    /// Time allowed between connecting and a successful join or resume.
    pub join_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Bound on a graceful drain.
    pub drain_timeout: Duration,
    pub max_connections: usize,
    /// Connections one address may hold before they join (handshaking or awaiting `join`).
    pub max_unjoined_per_ip: usize,
    /// Cap on bytes queued for one client whose socket would block.
    pub max_queued_bytes: usize,
    /// Read buffer per connection.
    pub read_buffer_bytes: usize,
    /// Kernel send buffer per client socket (SO_SNDBUF); `None` leaves the kernel's autotuning.
    pub socket_send_buffer: Option<usize>,
    /// Inputs a world queues between two ticks.
    pub input_queue: usize,
    pub limits: SessionLimits,
    /// Keys accepted on tickets: the current one and, while rotating, the previous one.
    pub ticket_keys: Vec<TicketKey>,
    /// Used tickets remembered (until they expire) to refuse reuse.
    pub max_used_tickets: usize,
    pub listen_backlog: u32,
    /// The allocator to report to; none in standalone use.
    pub allocator: Option<AllocatorLink>,
    /// Durable state; nothing configured keeps worlds in memory only.
    pub persist: PersistConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            ws_addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7001)),
            server_id: "gs-local".to_owned(),
            tick_hz: 20,
            max_worlds: 334,
            world: WorldConfig::default(),
            shards: 8,
            resume_grace: Duration::from_secs(10),
            idle_unload: Duration::from_secs(60),
            slow_client: Duration::from_secs(5),
            join_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            max_connections: 16_000,
            max_unjoined_per_ip: 256,
            max_queued_bytes: 64 * 1024,
            read_buffer_bytes: 4 * 1024,
            socket_send_buffer: None,
            input_queue: 1024,
            limits: SessionLimits::default(),
            ticket_keys: vec![TicketKey::development()],
            max_used_tickets: 500_000,
            listen_backlog: 4096,
            allocator: None,
            persist: PersistConfig::default(),
        }
    }
}

impl ServerConfig {
    pub fn tick_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.tick_hz.max(1)))
    }

    /// A duration in whole ticks (at least one).
    pub fn ticks(&self, d: Duration) -> u64 {
        ((d.as_secs_f64() * f64::from(self.tick_hz)).ceil() as u64).max(1)
    }

    /// Whether tickets are checked with the publicly known development key.
    pub fn uses_development_key(&self) -> bool {
        self.ticket_keys.iter().any(TicketKey::is_development)
    }
}
