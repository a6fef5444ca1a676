//! `arena-gameserver`: serve worlds, or mint a join ticket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use arena_gameserver::config::{AllocatorLink, defaults as d};
use arena_gameserver::load::LoadConfig;
use arena_gameserver::persist::PersistConfig;
use arena_gameserver::world::WorldConfig;
use arena_gameserver::{Server, ServerConfig};
use arena_sdk::ticket::{Grant, TicketKey, mint};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "arena-gameserver", version, about = "Arena world server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve worlds over WebSocket (ws://<ws-addr>/ws) with health and metrics on <http-addr>.
    ///
    /// Join tickets are checked with ARENA_TICKET_KEY (`<key id>:<secret>`, secret at least 32
    /// bytes) and, while rotating, ARENA_TICKET_KEY_PREVIOUS. Without ARENA_TICKET_KEY a fixed
    /// development key is used, and only loopback addresses may be served.
    Serve(Box<ServeArgs>),
    /// Print one signed join ticket to stdout (signed with ARENA_TICKET_KEY, or the development key).
    Ticket(TicketArgs),
    /// Apply the database migrations (migrations/) and create the activity partitions.
    Migrate {
        /// PostgreSQL URL.
        #[arg(long, env = "ARENA_DATABASE_URL")]
        database_url: String,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// WebSocket listen address (port 0: any free port; see --ready-file).
    #[arg(long, env = "ARENA_WS_ADDR", default_value = d::WS_ADDR)]
    ws_addr: SocketAddr,
    /// Serve `wss://` (TLS 1.3 only) on the WebSocket listener with this certificate chain
    /// (PEM); plain `ws://` clients are then refused with 400.
    #[arg(long, env = "ARENA_WS_TLS_CERT", requires = "ws_tls_key")]
    ws_tls_cert: Option<std::path::PathBuf>,
    /// The WebSocket certificate's private key (PEM).
    #[arg(long, env = "ARENA_WS_TLS_KEY", requires = "ws_tls_cert")]
    ws_tls_key: Option<std::path::PathBuf>,
    /// HTTP listen address (/healthz, /readyz, /metrics).
    #[arg(long, env = "ARENA_HTTP_ADDR", default_value = d::HTTP_ADDR)]
    http_addr: SocketAddr,
    /// Also serve QUIC on this UDP address (docs/protocol.md, QUIC). Off when absent.
    #[arg(long, env = "ARENA_QUIC_ADDR")]
    quic_addr: Option<SocketAddr>,
    /// The QUIC certificate chain (PEM); without it a self-signed certificate is made at start
    /// and its SHA-256 logged and written to the ready file, for clients to pin.
    #[arg(long, env = "ARENA_QUIC_CERT", requires = "quic_key", requires = "quic_addr")]
    quic_cert: Option<std::path::PathBuf>,
    /// The QUIC certificate's private key (PEM).
    #[arg(long, env = "ARENA_QUIC_KEY", requires = "quic_cert")]
    quic_key: Option<std::path::PathBuf>,
    /// This server's id; tickets bound to another server are refused.
    #[arg(long, env = "ARENA_SERVER_ID", default_value = d::SERVER_ID)]
    server_id: String,
    /// This server's build or template version, reported to the allocator (the fleet rolls
    /// servers by it).
    #[arg(long, env = "ARENA_SERVER_VERSION")]
    server_version: Option<String>,
    /// World ticks per second.
    #[arg(long, env = "ARENA_TICK_HZ", default_value_t = d::TICK_HZ, value_parser = clap::value_parser!(u32).range(1..=120))]
    tick_hz: u32,
    /// Most worlds this process holds.
    #[arg(long, env = "ARENA_MAX_WORLDS", default_value_t = d::MAX_WORLDS)]
    max_worlds: usize,
    /// Bots per world.
    #[arg(long, env = "ARENA_WORLD_CAPACITY", default_value_t = d::WORLD_CAPACITY)]
    world_capacity: usize,
    /// Tick tasks the worlds are spread over.
    #[arg(long, env = "ARENA_SHARDS", default_value_t = d::SHARDS)]
    shards: usize,
    /// Seconds a dropped bot keeps its seat.
    #[arg(long, env = "ARENA_RESUME_GRACE_SECS", default_value_t = d::RESUME_GRACE_SECS)]
    resume_grace_secs: f64,
    /// Seconds an empty world stays loaded.
    #[arg(long, env = "ARENA_IDLE_UNLOAD_SECS", default_value_t = d::IDLE_UNLOAD_SECS)]
    idle_unload_secs: f64,
    /// Seconds a client may stay unable to take updates before it is closed with 4004.
    #[arg(long, env = "ARENA_SLOW_CLIENT_SECS", default_value_t = d::SLOW_CLIENT_SECS)]
    slow_client_secs: f64,
    /// Seconds allowed between connecting and a successful join or resume.
    #[arg(long, env = "ARENA_JOIN_TIMEOUT_SECS", default_value_t = d::JOIN_TIMEOUT_SECS)]
    join_timeout_secs: f64,
    /// Seconds allowed for the WebSocket handshake.
    #[arg(long, env = "ARENA_HANDSHAKE_TIMEOUT_SECS", default_value_t = d::HANDSHAKE_TIMEOUT_SECS)]
    handshake_timeout_secs: f64,
    /// Seconds allowed for a graceful drain on SIGTERM.
    #[arg(long, env = "ARENA_DRAIN_TIMEOUT_SECS", default_value_t = d::DRAIN_TIMEOUT_SECS)]
    drain_timeout_secs: f64,
    /// Seconds bytes may wait for a client socket that takes nothing before it is closed hard.
    #[arg(long, env = "ARENA_FLUSH_TIMEOUT_SECS", default_value_t = d::FLUSH_TIMEOUT_SECS)]
    flush_timeout_secs: f64,
    /// Most simultaneous connections (lowered to what the descriptor limit allows).
    #[arg(long, env = "ARENA_MAX_CONNECTIONS", default_value_t = d::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Kernel send buffer of each client socket in bytes (default: the kernel's autotuning).
    #[arg(long, env = "ARENA_SOCKET_SEND_BUFFER_BYTES")]
    socket_send_buffer_bytes: Option<usize>,
    /// Most connections waiting to join (handshaking or awaiting `join`).
    #[arg(long, env = "ARENA_MAX_PENDING", default_value_t = d::MAX_PENDING)]
    max_pending: usize,
    /// Most connections waiting to join from one address (joined ones do not count).
    #[arg(long, env = "ARENA_MAX_PENDING_PER_IP", default_value_t = d::MAX_PENDING_PER_IP)]
    max_pending_per_ip: usize,
    /// Allocator(s) to report to every second (comma-separated replicas, or one URL behind a
    /// load balancer); standalone without. Heartbeats authenticate with ARENA_SERVER_KEY
    /// (default: the development key).
    #[arg(long, env = "ARENA_ALLOCATOR_URL", value_delimiter = ',')]
    allocator_url: Vec<String>,
    /// This server's region, as reported to the allocator.
    #[arg(long, env = "ARENA_REGION", default_value = d::REGION)]
    region: String,
    /// WebSocket URL bots should be sent to (default: ws://<ws-addr>/ws, or wss:// with
    /// --ws-tls-cert).
    #[arg(long, env = "ARENA_PUBLIC_WS_URL")]
    public_ws_url: Option<String>,
    /// QUIC endpoint bots should be sent to, quic://host:port (default: quic://<quic-addr>
    /// when --quic-addr is given).
    #[arg(long, env = "ARENA_PUBLIC_QUIC_URL", requires = "quic_addr")]
    public_quic_url: Option<String>,
    /// Seconds between heartbeats.
    #[arg(long, env = "ARENA_HEARTBEAT_SECS", default_value_t = d::HEARTBEAT_SECS)]
    heartbeat_secs: f64,
    /// Seconds a world suspended by a lost lease is kept for its placement to come back.
    #[arg(long, env = "ARENA_SUSPEND_KEEP_SECS", default_value_t = d::SUSPEND_KEEP_SECS)]
    suspend_keep_secs: f64,
    /// Tick budget: shard ticks may start this many ms late (95th percentile) at full load.
    #[arg(long, env = "ARENA_LATENESS_BUDGET_MS", default_value_t = d::LATENESS_BUDGET_MS)]
    lateness_budget_ms: f64,
    /// Tick budget: cores of CPU the process may use at full load (default: 80 % of the machine's).
    #[arg(long, env = "ARENA_CPU_TARGET_CORES")]
    cpu_target_cores: Option<f32>,
    /// Tick budget: share (0–1) of the whole machine's CPU, whoever uses it, that may be busy at
    /// full load; 0 ignores the machine.
    #[arg(long, env = "ARENA_MACHINE_CPU_TARGET", default_value_t = d::MACHINE_CPU_TARGET)]
    machine_cpu_target: f32,
    /// PostgreSQL URL: activity log and durable world snapshots. Without it (and without
    /// --redis-url) worlds live in memory only.
    #[arg(long, env = "ARENA_DATABASE_URL")]
    database_url: Option<String>,
    /// Apply the database migrations at start.
    #[arg(long, env = "ARENA_MIGRATE")]
    migrate: bool,
    /// Redis URL for world snapshots every second.
    #[arg(long, env = "ARENA_REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of the Redis snapshot keys (<prefix>:snap:<world>).
    #[arg(long, env = "ARENA_REDIS_PREFIX", default_value = "{arena}")]
    redis_prefix: String,
    /// Seconds a Redis snapshot is kept after its last write.
    #[arg(long, env = "ARENA_REDIS_SNAPSHOT_TTL_SECS", default_value_t = 86_400)]
    redis_snapshot_ttl_secs: u64,
    /// Seconds allowed for each call to PostgreSQL or Redis.
    #[arg(long, env = "ARENA_STORE_TIMEOUT_SECS", default_value_t = 2.0)]
    store_timeout_secs: f64,
    /// Milliseconds between activity log flushes (at most).
    #[arg(long, env = "ARENA_FLUSH_EVERY_MS", default_value_t = 1000)]
    flush_every_ms: u64,
    /// Activity records held while PostgreSQL is slow or down; beyond, they are dropped and counted.
    #[arg(long, env = "ARENA_ACTIVITY_BUFFER", default_value_t = 200_000)]
    activity_buffer: usize,
    /// Seconds between world snapshots to PostgreSQL (they also go there on drain).
    #[arg(long, env = "ARENA_SNAPSHOT_EVERY_SECS", default_value_t = 60.0)]
    snapshot_every_secs: f64,
    /// Days of activity partitions kept attached (0: all).
    #[arg(long, env = "ARENA_RETENTION_DAYS", default_value_t = 30)]
    retention_days: u32,
    /// Write the bound addresses here (JSON) once ready.
    #[arg(long, env = "ARENA_READY_FILE")]
    ready_file: Option<PathBuf>,
    /// Serve POST /debug/panic-shard on the HTTP port (for tests; loopback only).
    #[arg(long, env = "ARENA_ENABLE_FAULT_INJECTION")]
    enable_fault_injection: bool,
    /// Worker threads (default: one per core).
    #[arg(long, env = "ARENA_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Log format.
    #[arg(long, env = "ARENA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Args, Debug)]
struct TicketArgs {
    /// World the ticket admits to.
    #[arg(long)]
    world: String,
    /// Bot the ticket admits.
    #[arg(long)]
    bot: String,
    /// Lifetime in seconds (at most 3600).
    #[arg(long, default_value_t = 60)]
    ttl_secs: u64,
    /// Bind the ticket to this server id.
    #[arg(long)]
    server: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The signing key and the keys accepted, from the environment.
fn ticket_keys() -> anyhow::Result<Vec<TicketKey>> {
    let Ok(current) = std::env::var("ARENA_TICKET_KEY") else {
        tracing::warn!("ARENA_TICKET_KEY is not set: using the public development key (loopback only)");
        return Ok(vec![TicketKey::development()]);
    };
    let mut keys = vec![TicketKey::parse(&current).context("ARENA_TICKET_KEY")?];
    if let Ok(previous) = std::env::var("ARENA_TICKET_KEY_PREVIOUS") {
        keys.push(TicketKey::parse(&previous).context("ARENA_TICKET_KEY_PREVIOUS")?);
    }
    Ok(keys)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Ticket(args) => {
            init_logging(LogFormat::Text);
            let key = ticket_keys()?.remove(0);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
            let (ticket, _) = mint(
                &key,
                &Grant { server: args.server.as_deref(), ..Grant::new(&args.world, &args.bot) },
                args.ttl_secs,
                now,
            )
            .map_err(|e| anyhow::anyhow!("cannot mint: {e} (ids are 1-64 of A-Z a-z 0-9 _ . : -; ttl 1-3600)"))?;
            println!("{ticket}");
            Ok(())
        }
        Command::Migrate { database_url } => {
            init_logging(LogFormat::Text);
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
                let pool =
                    arena_gameserver::persist::connect_pg(&database_url).await.context("connecting to PostgreSQL")?;
                arena_gameserver::persist::migrate(&pool).await.context("applying migrations")?;
                let m = arena_gameserver::persist::maintenance::run(&pool, 7, 0).await?;
                tracing::info!(partitions_created = m.partitions_created, "migrations applied");
                Ok(())
            })
        }
        Command::Serve(args) => {
            init_logging(args.log_format);
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.enable_all();
            if let Some(n) = args.worker_threads {
                rt.worker_threads(n.max(1));
            }
            rt.build()?.block_on(serve(*args))
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let defaults = ServerConfig::default();
    let cfg = ServerConfig {
        ws_addr: args.ws_addr,
        ws_tls: args.ws_tls_cert.clone().zip(args.ws_tls_key.clone()),
        http_addr: args.http_addr,
        quic: args.quic_addr.map(|addr| arena_gameserver::config::QuicConfig {
            addr,
            cert: args.quic_cert.clone().zip(args.quic_key.clone()),
        }),
        server_id: args.server_id,
        version: args.server_version,
        tick_hz: args.tick_hz,
        max_worlds: args.max_worlds,
        world: WorldConfig { capacity: args.world_capacity, ..WorldConfig::default() },
        shards: args.shards.max(1),
        resume_grace: secs(args.resume_grace_secs),
        idle_unload: secs(args.idle_unload_secs),
        slow_client: secs(args.slow_client_secs),
        join_timeout: secs(args.join_timeout_secs),
        handshake_timeout: secs(args.handshake_timeout_secs),
        drain_timeout: secs(args.drain_timeout_secs),
        flush_timeout: secs(args.flush_timeout_secs),
        max_connections: args.max_connections,
        max_pending: args.max_pending,
        max_pending_per_ip: args.max_pending_per_ip,
        socket_send_buffer: args.socket_send_buffer_bytes,
        ticket_keys: ticket_keys()?,
        allocator: (!args.allocator_url.is_empty()).then(|| AllocatorLink {
            urls: args.allocator_url.clone(),
            region: args.region.clone(),
            public_ws_url: args.public_ws_url.clone(),
            public_quic_url: args.public_quic_url.clone(),
            server_key: std::env::var("ARENA_SERVER_KEY").unwrap_or_else(|_| {
                tracing::warn!("ARENA_SERVER_KEY is not set: reporting with the development key");
                "arena-dev-key".to_owned()
            }),
            every: secs(args.heartbeat_secs.max(0.05)),
        }),
        suspend_keep: secs(args.suspend_keep_secs),
        load: LoadConfig {
            lateness_budget: Duration::from_secs_f64(args.lateness_budget_ms.max(0.1) / 1000.0),
            cpu_target: args.cpu_target_cores.unwrap_or(defaults.load.cpu_target).max(0.05),
            machine_target: args.machine_cpu_target.clamp(0.0, 1.0),
            ..defaults.load
        },
        persist: PersistConfig {
            database_url: args.database_url,
            redis_url: args.redis_url,
            redis_prefix: args.redis_prefix,
            redis_snapshot_ttl: Duration::from_secs(args.redis_snapshot_ttl_secs.max(1)),
            store_timeout: secs(args.store_timeout_secs.max(0.05)),
            migrate: args.migrate,
            flush_every: Duration::from_millis(args.flush_every_ms.max(10)),
            activity_buffer: args.activity_buffer.max(1),
            pg_snapshot_every: secs(args.snapshot_every_secs.max(0.1)),
            retention_days: args.retention_days,
            ..PersistConfig::default()
        },
        ready_file: args.ready_file,
        fault_injection: args.enable_fault_injection,
        ..defaults
    };
    if !arena_sdk::protocol::valid_id(&args.region) {
        bail!("--region must be 1-64 characters of A-Z a-z 0-9 _ . : -");
    }
    if !arena_sdk::protocol::valid_id(&cfg.server_id) {
        bail!("--server-id must be 1-64 characters of A-Z a-z 0-9 _ . : -");
    }
    if cfg.version.as_deref().is_some_and(|v| !arena_sdk::protocol::valid_id(v)) {
        bail!("--server-version must be 1-64 characters of A-Z a-z 0-9 _ . : -");
    }
    for addr in [cfg.ws_addr, cfg.http_addr] {
        if cfg.uses_development_key() && !addr.ip().is_loopback() {
            bail!("refusing to listen on {addr} with the development ticket key: set ARENA_TICKET_KEY");
        }
    }
    if cfg.fault_injection && !cfg.http_addr.ip().is_loopback() {
        bail!("--enable-fault-injection is for tests: the HTTP port must be on loopback");
    }
    tracing::info!(ws = %cfg.ws_addr, http = %cfg.http_addr, max_worlds = cfg.max_worlds, tick_hz = cfg.tick_hz, "starting");
    let server = Server::bind(cfg).await.context("binding listeners")?;
    tracing::info!(ws = %server.ws_addr()?, http = %server.http_addr()?, "listening");
    server.run(arena_service::signal::terminate()).await
}
