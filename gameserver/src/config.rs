//! Gameserver settings. Every default is a constant in [`defaults`], used both by
//! [`ServerConfig::default`] and by the command line (`main.rs`), so the two agree by
//! construction.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use arena_sdk::ticket::TicketKey;
use arena_service::http::HttpLimits;

use crate::load::LoadConfig;
use crate::persist::PersistConfig;
use crate::session::SessionLimits;
use crate::world::WorldConfig;

/// The default of every setting.
pub mod defaults {
    pub const WS_ADDR: &str = "127.0.0.1:7000";
    pub const HTTP_ADDR: &str = "127.0.0.1:7001";
    pub const SERVER_ID: &str = "gs-local";
    pub const REGION: &str = "local";
    pub const TICK_HZ: u32 = 20;
    pub const MAX_WORLDS: usize = 334;
    pub const WORLD_CAPACITY: usize = 30;
    pub const SHARDS: usize = 8;
    pub const RESUME_GRACE_SECS: f64 = 10.0;
    pub const IDLE_UNLOAD_SECS: f64 = 60.0;
    pub const SLOW_CLIENT_SECS: f64 = 5.0;
    pub const JOIN_TIMEOUT_SECS: f64 = 10.0;
    pub const HANDSHAKE_TIMEOUT_SECS: f64 = 10.0;
    pub const DRAIN_TIMEOUT_SECS: f64 = 10.0;
    pub const FLUSH_TIMEOUT_SECS: f64 = 5.0;
    pub const MAX_CONNECTIONS: usize = 16_000;
    pub const MAX_PENDING: usize = 8_192;
    pub const MAX_PENDING_PER_IP: usize = 4_096;
    pub const MAX_QUEUED_BYTES: usize = 64 * 1024;
    pub const READ_BUFFER_BYTES: usize = 4 * 1024;
    pub const INPUT_QUEUE: usize = 1024;
    pub const MAX_USED_TICKETS: usize = 500_000;
    pub const LISTEN_BACKLOG: u32 = 4096;
    pub const HEARTBEAT_SECS: f64 = 1.0;
    pub const SUSPEND_KEEP_SECS: f64 = 60.0;
    pub const LATENESS_BUDGET_MS: f64 = 10.0;
    /// Share of the machine's cores the process may use at full load.
    pub const CPU_TARGET_SHARE: f32 = 0.8;
    /// Share of the machine's CPU (everyone's) that may be busy at full load.
    pub const MACHINE_CPU_TARGET: f32 = 0.85;
    pub const RESUME_BELOW: f32 = 0.8;
    pub const HTTP_MAX_CONNECTIONS: usize = 256;
}

/// How this server reaches its allocator.
#[derive(Debug, Clone)]
pub struct AllocatorLink {
    /// Base URLs of allocator replicas (or one URL behind a load balancer), tried in turn.
    pub urls: Vec<String>,
    pub region: String,
    /// The WebSocket URL bots should use; default `ws://<ws-addr>/ws`.
    pub public_ws_url: Option<String>,
    /// The QUIC endpoint bots should use (`quic://host:port`); default `quic://<quic-addr>`
    /// when QUIC is served.
    pub public_quic_url: Option<String>,
    /// Bearer key for `POST /v1/servers/heartbeat`.
    pub server_key: String,
    /// How often to report.
    pub every: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// WebSocket listen address; the endpoint is `ws://<ws_addr>/ws` (`wss://` with `ws_tls`).
    pub ws_addr: SocketAddr,
    /// A certificate chain and its key (PEM files) for the WebSocket listener: it then serves
    /// TLS only (`wss://`).
    pub ws_tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The QUIC endpoint, when served.
    pub quic: Option<QuicConfig>,
    /// HTTP listen address for `/healthz`, `/readyz` and `/metrics`.
    pub http_addr: SocketAddr,
    /// This server's id; tickets naming another server are refused.
    pub server_id: String,
    /// This server's build or template version, reported to the allocator.
    pub version: Option<String>,
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
    /// How long bytes may stay queued for a client whose socket takes nothing before the
    /// connection is closed hard (and, after a close, how long the close may take).
    pub flush_timeout: Duration,
    pub max_connections: usize,
    /// Connections waiting to join, in all and from one address.
    pub max_pending: usize,
    pub max_pending_per_ip: usize,
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
    /// How long a suspended world (lease lost) is kept for its placement to come back.
    pub suspend_keep: Duration,
    /// The tick budget.
    pub load: LoadConfig,
    /// Past the budget, new bots come again once the load is below this share of it.
    pub resume_below: f32,
    /// Durable state; nothing configured keeps worlds in memory only.
    pub persist: PersistConfig,
    /// The HTTP side port's limits.
    pub http: HttpLimits,
    /// Write the bound addresses here once ready.
    pub ready_file: Option<PathBuf>,
    /// Serve `POST /debug/...` fault injection on the HTTP port (tests only; loopback only).
    pub fault_injection: bool,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Cores the process may use at full load: a share of the machine's.
pub fn default_cpu_target() -> f32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores as f32 * defaults::CPU_TARGET_SHARE
}

impl Default for ServerConfig {
    fn default() -> Self {
        use defaults as d;
        let parse = |a: &str| a.parse().unwrap_or_else(|_| unreachable!("default addresses parse"));
        ServerConfig {
            ws_addr: parse(d::WS_ADDR),
            ws_tls: None,
            quic: None,
            http_addr: parse(d::HTTP_ADDR),
            server_id: d::SERVER_ID.to_owned(),
            version: None,
            tick_hz: d::TICK_HZ,
            max_worlds: d::MAX_WORLDS,
            world: WorldConfig { capacity: d::WORLD_CAPACITY, ..WorldConfig::default() },
            shards: d::SHARDS,
            resume_grace: secs(d::RESUME_GRACE_SECS),
            idle_unload: secs(d::IDLE_UNLOAD_SECS),
            slow_client: secs(d::SLOW_CLIENT_SECS),
            join_timeout: secs(d::JOIN_TIMEOUT_SECS),
            handshake_timeout: secs(d::HANDSHAKE_TIMEOUT_SECS),
            drain_timeout: secs(d::DRAIN_TIMEOUT_SECS),
            flush_timeout: secs(d::FLUSH_TIMEOUT_SECS),
            max_connections: d::MAX_CONNECTIONS,
            max_pending: d::MAX_PENDING,
            max_pending_per_ip: d::MAX_PENDING_PER_IP,
            max_queued_bytes: d::MAX_QUEUED_BYTES,
            read_buffer_bytes: d::READ_BUFFER_BYTES,
            socket_send_buffer: None,
            input_queue: d::INPUT_QUEUE,
            limits: SessionLimits::default(),
            ticket_keys: vec![TicketKey::development()],
            max_used_tickets: d::MAX_USED_TICKETS,
            listen_backlog: d::LISTEN_BACKLOG,
            allocator: None,
            suspend_keep: secs(d::SUSPEND_KEEP_SECS),
            load: LoadConfig {
                lateness_budget: Duration::from_secs_f64(d::LATENESS_BUDGET_MS / 1000.0),
                cpu_target: default_cpu_target(),
                machine_target: d::MACHINE_CPU_TARGET,
                ..LoadConfig::default()
            },
            resume_below: d::RESUME_BELOW,
            persist: PersistConfig::default(),
            http: HttpLimits { max_connections: d::HTTP_MAX_CONNECTIONS, ..HttpLimits::default() },
            ready_file: None,
            fault_injection: false,
        }
    }
}

/// Where QUIC is served, and with which certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicConfig {
    /// UDP listen address.
    pub addr: SocketAddr,
    /// A certificate chain and its key (PEM files); without them, a self-signed certificate is
    /// made at start and its SHA-256 published for clients to pin.
    pub cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
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

    /// The region this server reports (none without an allocator).
    pub fn region(&self) -> &str {
        self.allocator.as_ref().map_or(defaults::REGION, |l| l.region.as_str())
    }
}
