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
    let keys = Keys::new(list("ARENA_API_KEYS"), list("ARENA_SERVER_KEYS"));
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
        server_timeout_ms: (args.server_timeout_secs.max(0.1) * 1000.0) as u64,
        placement_grace_ms: (args.reservation_ttl_secs + 5) * 1000,
    };
    let rules = AllocationRules {
        server_timeout: Duration::from_millis(timing.server_timeout_ms),
        reservation_ttl: Duration::from_secs(args.reservation_ttl_secs.clamp(1, 3600)),
        regions: args.regions.clone(),
        ..AllocationRules::default()
    };
    let limits = LimitConfig {
        per_key: Rate { per_sec: args.key_rate, burst: args.key_rate * 2.0 },
        per_ip: Rate { per_sec: args.ip_rate, burst: args.ip_rate * 2.0 },
        ..LimitConfig::default()
    };
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    match &args.redis_url {
        Some(url) => {
            let registry =
                RedisRegistry::connect(url, &args.redis_prefix, timing).await.context("connecting to Redis")?;
            tracing::info!(listen = %args.listen, prefix = %args.redis_prefix, "registry: Redis (shared by every replica)");
            run(listener, registry, rules, signing_key, keys, limits).await
        }
        None => {
            tracing::info!(listen = %args.listen, "registry: in memory (embedded default, single allocator process)");
            run(listener, MemoryRegistry::new(timing), rules, signing_key, keys, limits).await
        }
    }
}

async fn run<R: Registry>(
    listener: tokio::net::TcpListener,
    registry: R,
    rules: AllocationRules,
    signing_key: TicketKey,
    keys: Keys,
    limits: LimitConfig,
) -> anyhow::Result<()> {
    let allocator = Allocator::new(registry, rules, signing_key, Arc::new(Metrics::new()));
    if let Err(e) = allocator.refresh().await {
        tracing::warn!(error = %e, "first index refresh failed; retrying in the background");
    }
    let app = Arc::new(App { allocator, keys, limiter: Limiter::new(limits) });
    server::spawn(listener, app, shutdown_signal()).await??;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
