//! `arena-allocator`: the allocation API over an in-memory or Redis registry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use arena_allocator::api::App;
use arena_allocator::auth::Keys;
use arena_allocator::metrics::Metrics;
use arena_allocator::ratelimit::{LimitConfig, Limiter, Rate};
use arena_allocator::registry::memory::MemoryRegistry;
use arena_allocator::registry::redis::RedisRegistry;
use arena_allocator::registry::{Registry, Timing};
use arena_allocator::server;
use arena_allocator::service::{AllocationRules, Allocator};
use arena_sdk::ticket::TicketKey;
use arena_service::http::HttpLimits;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "arena-allocator", version, about = "Arena allocator: where does this bot play?")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the allocation API (see docs/allocator-api.md).
    ///
    /// Tickets are signed with ARENA_TICKET_KEY (`<key id>:<secret>`), the key gameservers check.
    /// Callers authenticate with a bearer key from ARENA_API_KEYS, gameservers with one from
    /// ARENA_SERVER_KEYS (comma-separated lists). With neither set, the development key
    /// `arena-dev-key` serves both and only loopback addresses may be served; the same holds
    /// without ARENA_TICKET_KEY.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Listen address.
    #[arg(long, env = "ARENA_ALLOCATOR_ADDR", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// Redis URL of the shared registry; without it the registry lives in this process.
    #[arg(long, env = "ARENA_REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of every Redis key (a hash tag keeps them in one cluster slot).
    #[arg(long, env = "ARENA_REDIS_PREFIX", default_value = "{arena}")]
    redis_prefix: String,
    /// The fleet's regions (comma-separated); other regions are refused. Default: those servers report.
    #[arg(long, env = "ARENA_REGIONS", value_delimiter = ',')]
    regions: Vec<String>,
    /// Seconds without a heartbeat after which a server gets no seats and its worlds may move.
    #[arg(long, env = "ARENA_SERVER_TIMEOUT_SECS", default_value_t = 5.0)]
    server_timeout_secs: f64,
    /// Seconds an unused reservation (and its ticket) lives.
    #[arg(long, env = "ARENA_RESERVATION_TTL_SECS", default_value_t = 15)]
    reservation_ttl_secs: u64,
    /// Seconds each call to the registry may take before the request is answered 503.
    #[arg(long, env = "ARENA_REGISTRY_TIMEOUT_SECS", default_value_t = 1.0)]
    registry_timeout_secs: f64,
    /// Most open HTTP connections (more wait in the listen backlog).
    #[arg(long, env = "ARENA_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Write the bound address here (JSON) once serving.
    #[arg(long, env = "ARENA_READY_FILE")]
    ready_file: Option<std::path::PathBuf>,
    /// Requests per second per API key (sustained; bursts of twice that).
    #[arg(long, env = "ARENA_KEY_RATE", default_value_t = 20_000.0)]
    key_rate: f64,
    /// Requests per second per client address (sustained; bursts of twice that).
    #[arg(long, env = "ARENA_IP_RATE", default_value_t = 20_000.0)]
    ip_rate: f64,
    #[arg(long, env = "ARENA_WORKER_THREADS")]
    worker_threads: Option<usize>,
    #[arg(long, env = "ARENA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn list(var: &str) -> Vec<String> {
    std::env::var(var)
        .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let Command::Serve(args) = Cli::parse().command;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.worker_threads {
        rt.worker_threads(n.max(1));
    }
    rt.build()?.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let signing_key = match std::env::var("ARENA_TICKET_KEY") {
        Ok(spec) => TicketKey::parse(&spec).context("ARENA_TICKET_KEY")?,
        Err(_) => {
            tracing::warn!("ARENA_TICKET_KEY is not set: signing with the public development key (loopback only)");
            TicketKey::development()
        }
    };
    let keys = Keys::new(list("ARENA_API_KEYS"), list("ARENA_SERVER_KEYS")).context("ARENA_SERVER_KEYS")?;
    if keys.is_development() {
        tracing::warn!("ARENA_API_KEYS / ARENA_SERVER_KEYS are not set: accepting the development key (loopback only)");
    }
    if (keys.is_development() || signing_key.is_development()) && !args.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {} with development keys: set ARENA_TICKET_KEY, ARENA_API_KEYS, ARENA_SERVER_KEYS",
            args.listen
        );
    }
    for r in &args.regions {
        if !arena_sdk::protocol::valid_id(r) {
            bail!("--regions: {r:?} is not a region name");
        }
    }
    let timing = Timing {
        server_timeout_ms: (args.server_timeout_secs.max(0.5) * 1000.0) as u64,
        placement_grace_ms: (args.reservation_ttl_secs + 5) * 1000,
        ..Timing::default()
    };
    let registry_timeout = Duration::from_secs_f64(args.registry_timeout_secs.clamp(0.05, 30.0));
    let rules = AllocationRules {
        reservation_ttl: Duration::from_secs(args.reservation_ttl_secs.clamp(1, 3600)),
        regions: args.regions.clone(),
        registry_timeout,
        stale_after: (registry_timeout + Duration::from_millis(500)).max(Duration::from_millis(1500)),
        ..AllocationRules::default()
    };
    let http = HttpLimits { max_connections: args.max_connections.max(1), ..HttpLimits::default() };
    let limits = LimitConfig {
        per_key: Rate { per_sec: args.key_rate, burst: args.key_rate * 2.0 },
        per_ip: Rate { per_sec: args.ip_rate, burst: args.ip_rate * 2.0 },
        ..LimitConfig::default()
    };
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let bound = listener.local_addr()?;
    let serving = Serving { listener, rules, signing_key, keys, limits, http, ready_file: args.ready_file.clone() };
    match &args.redis_url {
        Some(url) => {
            let registry = RedisRegistry::connect(url, &args.redis_prefix, timing, registry_timeout)
                .await
                .context("connecting to Redis")?;
            tracing::info!(listen = %bound, prefix = %args.redis_prefix, "registry: Redis (shared by every replica)");
            run(serving, registry).await
        }
        None => {
            tracing::info!(listen = %bound, "registry: in memory (embedded default, single allocator process)");
            run(serving, MemoryRegistry::new(timing)).await
        }
    }
}

/// What serving needs besides the registry.
struct Serving {
    listener: tokio::net::TcpListener,
    rules: AllocationRules,
    signing_key: TicketKey,
    keys: Keys,
    limits: LimitConfig,
    http: HttpLimits,
    ready_file: Option<std::path::PathBuf>,
}

async fn run<R: Registry>(s: Serving, registry: R) -> anyhow::Result<()> {
    let allocator = Allocator::new(registry, s.rules, s.signing_key, Arc::new(Metrics::new()));
    if let Err(e) = allocator.refresh().await {
        tracing::warn!(error = %e, "first index refresh failed; retrying in the background");
    }
    let app = Arc::new(App::new(allocator, s.keys, Limiter::new(s.limits)));
    let addr = s.listener.local_addr()?;
    let handle = server::spawn(s.listener, app, s.http, arena_service::signal::terminate());
    if let Some(path) = &s.ready_file {
        arena_service::ready::write(path, &serde_json::json!({ "http": addr, "pid": std::process::id() }))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    handle.await??;
    tracing::info!("stopped");
    Ok(())
}
