//! `arena-gameserver`: serve worlds, or mint a join ticket.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use arena_gameserver::heartbeat::AllocatorLink;
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
    /// WebSocket listen address.
    #[arg(long, env = "ARENA_WS_ADDR", default_value = "127.0.0.1:7000")]
    ws_addr: SocketAddr,
    /// HTTP listen address (/healthz, /readyz, /metrics).
    #[arg(long, env = "ARENA_HTTP_ADDR", default_value = "127.0.0.1:7001")]
    http_addr: SocketAddr,
    /// This server's id; tickets bound to another server are refused.
    #[arg(long, env = "ARENA_SERVER_ID", default_value = "gs-local")]
    server_id: String,
    /// World ticks per second.
    #[arg(long, env = "ARENA_TICK_HZ", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=120))]
    tick_hz: u32,
    /// Most worlds this process holds.
    #[arg(long, env = "ARENA_MAX_WORLDS", default_value_t = 334)]
    max_worlds: usize,
    /// Bots per world.
    #[arg(long, env = "ARENA_WORLD_CAPACITY", default_value_t = 30)]
    world_capacity: usize,
    /// Tick tasks the worlds are spread over.
    #[arg(long, env = "ARENA_SHARDS", default_value_t = 8)]
    shards: usize,
    /// Seconds a dropped bot keeps its seat.
    #[arg(long, env = "ARENA_RESUME_GRACE_SECS", default_value_t = 10.0)]
    resume_grace_secs: f64,
    /// Seconds an empty world stays loaded.
    #[arg(long, env = "ARENA_IDLE_UNLOAD_SECS", default_value_t = 60.0)]
    idle_unload_secs: f64,
    /// Seconds allowed for a graceful drain on SIGTERM.
    #[arg(long, env = "ARENA_DRAIN_TIMEOUT_SECS", default_value_t = 10.0)]
    drain_timeout_secs: f64,
    /// Most simultaneous connections.
    #[arg(long, env = "ARENA_MAX_CONNECTIONS", default_value_t = 16_000)]
    max_connections: usize,
    /// Allocator to report to every second (e.g. http://127.0.0.1:7100); standalone without it.
    /// Heartbeats authenticate with ARENA_SERVER_KEY (default: the development key).
    #[arg(long, env = "ARENA_ALLOCATOR_URL")]
    allocator_url: Option<String>,
    /// This server's region, as reported to the allocator.
    #[arg(long, env = "ARENA_REGION", default_value = "local")]
    region: String,
    /// WebSocket URL bots should be sent to (default: ws://<ws-addr>/ws).
    #[arg(long, env = "ARENA_PUBLIC_WS_URL")]
    public_ws_url: Option<String>,
    /// PostgreSQL URL: activity log and durable world snapshots. Without it (and without
    /// --redis-url) worlds live in memory only.
    #[arg(long, env = "ARENA_DATABASE_URL")]
    database_url: Option<String>,
    /// Apply the database migrations at start.
    #[arg(long, env = "ARENA_MIGRATE")]
    migrate: bool,
    /// Redis URL for world snapshots every second (use the allocator's Redis and prefix).
    #[arg(long, env = "ARENA_REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of the Redis keys (the allocator's registry prefix).
    #[arg(long, env = "ARENA_REDIS_PREFIX", default_value = "{arena}")]
    redis_prefix: String,
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

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = ServerConfig {
        ws_addr: args.ws_addr,
        http_addr: args.http_addr,
        server_id: args.server_id,
        tick_hz: args.tick_hz,
        max_worlds: args.max_worlds,
        world: WorldConfig { capacity: args.world_capacity, ..WorldConfig::default() },
        shards: args.shards.max(1),
        resume_grace: Duration::from_secs_f64(args.resume_grace_secs.max(0.0)),
        idle_unload: Duration::from_secs_f64(args.idle_unload_secs.max(0.0)),
        drain_timeout: Duration::from_secs_f64(args.drain_timeout_secs.max(0.0)),
        max_connections: args.max_connections,
        ticket_keys: ticket_keys()?,
        allocator: match args.allocator_url {
            Some(url) => Some(AllocatorLink {
                url,
                region: args.region.clone(),
                public_ws_url: args.public_ws_url,
                server_key: std::env::var("ARENA_SERVER_KEY").unwrap_or_else(|_| {
                    tracing::warn!("ARENA_SERVER_KEY is not set: reporting with the development key");
                    "arena-dev-key".to_owned()
                }),
                every: Duration::from_secs(1),
            }),
            None => None,
        },
        persist: PersistConfig {
            database_url: args.database_url,
            redis_url: args.redis_url,
            redis_prefix: args.redis_prefix,
            migrate: args.migrate,
            flush_every: Duration::from_millis(args.flush_every_ms.max(10)),
            activity_buffer: args.activity_buffer.max(1),
            pg_snapshot_every: Duration::from_secs_f64(args.snapshot_every_secs.max(0.1)),
            retention_days: args.retention_days,
            ..PersistConfig::default()
        },
        ..ServerConfig::default()
    };
    if !arena_sdk::protocol::valid_id(&args.region) {
        bail!("--region must be 1-64 characters of A-Z a-z 0-9 _ . : -");
    }
    if !arena_sdk::protocol::valid_id(&cfg.server_id) {
        bail!("--server-id must be 1-64 characters of A-Z a-z 0-9 _ . : -");
    }
    if cfg.uses_development_key() {
        for addr in [cfg.ws_addr, cfg.http_addr] {
            if !addr.ip().is_loopback() {
                bail!("refusing to listen on {addr} with the development ticket key: set ARENA_TICKET_KEY");
            }
        }
    }
    tracing::info!(ws = %cfg.ws_addr, http = %cfg.http_addr, max_worlds = cfg.max_worlds, tick_hz = cfg.tick_hz, "starting");
    let server = Server::bind(cfg).await.context("binding listeners")?;
    tracing::info!(ws = %server.ws_addr()?, http = %server.http_addr()?, "listening");
    server.run(shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}
