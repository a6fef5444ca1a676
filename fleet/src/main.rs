//! `arena-fleet`: run a local fleet (`up`), read a running one (`status`), print or check a
//! description (`spec`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use arena_fleet::local::LocalConfig;
use arena_fleet::spec::FleetSpec;
use arena_fleet::status::FleetStatus;
use arena_fleet::up::{UpConfig, up};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "arena-fleet",
    version,
    about = "Per-region fleets of Arena gameservers that size and heal themselves"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a local fleet: the allocator and each region's gameservers as processes here.
    Up(Box<UpArgs>),
    /// Show a running fleet.
    Status {
        /// The fleet's API.
        #[arg(long, env = "ARENA_FLEET_URL", default_value = "http://127.0.0.1:7300")]
        url: String,
        /// Print the JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Print the Kubernetes CustomResourceDefinition of `ArenaFleet` (YAML).
    Crd,
    /// Run the Kubernetes operator: size, heal and update the gameserver pods of every
    /// `ArenaFleet` in a namespace (one replica acts, by a Lease).
    Operator(Box<OperatorArgs>),
    /// Print the embedded default description (YAML), or check a description file.
    Spec {
        /// The file to check (YAML, TOML or JSON by its extension).
        #[arg(long)]
        check: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    /// The fleet description (YAML, TOML or JSON); the embedded default when absent. Changes to
    /// the file are applied while the fleet runs.
    #[arg(long, env = "ARENA_FLEET_SPEC")]
    spec: Option<PathBuf>,
    /// The fleet's HTTP API.
    #[arg(long, default_value = "127.0.0.1:7300")]
    listen: SocketAddr,
    /// Where the allocator listens.
    #[arg(long, default_value = "127.0.0.1:7100")]
    allocator_listen: String,
    /// Per-process logs (default: a new temporary directory).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Allocator API key the fleet reads with (and the load test allocates with).
    #[arg(long, env = "ARENA_API_KEY", default_value = "arena-dev-key")]
    api_key: String,
    /// Key for `PUT /v1/fleets/spec`.
    #[arg(long, env = "ARENA_FLEET_KEY", default_value = "arena-dev-key")]
    fleet_key: String,
    /// Once every region serves, run `arena-loadtest --allocator <the fleet's>` with these
    /// arguments (one string); then wait until the fleet is back at its minimum and stop.
    #[arg(long, allow_hyphen_values = true)]
    loadtest: Option<String>,
    /// Where the load test's report and the fleet's timeline (JSON and SVG) go.
    #[arg(long, default_value = "fleet-report")]
    report_dir: PathBuf,
    /// Seconds to wait after the load test for every region to be back at its minimum.
    #[arg(long, default_value_t = 180)]
    settle_secs: u64,
    #[arg(long)]
    gameserver_bin: Option<PathBuf>,
    #[arg(long)]
    allocator_bin: Option<PathBuf>,
    #[arg(long)]
    loadtest_bin: Option<PathBuf>,
    /// Write the API and allocator addresses here (JSON) once every region serves.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// No live status.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args, Debug)]
struct OperatorArgs {
    /// The namespace of the fleets, their pods and the Lease.
    #[arg(long, env = "ARENA_NAMESPACE")]
    namespace: String,
    /// This replica's name in the leader election (its pod's name).
    #[arg(long, env = "ARENA_POD_NAME")]
    identity: String,
    /// The allocator's URL(s), comma-separated: read for its view, and given to gameservers.
    #[arg(long, env = "ARENA_ALLOCATOR_URL", value_delimiter = ',', required = true)]
    allocator_url: Vec<String>,
    /// A caller key of the allocator (reads `GET /v1/servers`).
    #[arg(long, env = "ARENA_API_KEY", hide_env_values = true)]
    api_key: String,
    /// A server key of the allocator: with it, a crashed gameserver's worlds move at once.
    #[arg(long, env = "ARENA_SERVER_KEY", hide_env_values = true)]
    server_key: Option<String>,
    /// The gameserver PodTemplateSpec (YAML or JSON) with a container named `gameserver`.
    #[arg(long, env = "ARENA_POD_TEMPLATE")]
    pod_template: PathBuf,
    /// The Lease that elects the acting replica.
    #[arg(long, env = "ARENA_LEASE_NAME", default_value = "arena-fleet-operator")]
    lease_name: String,
    /// Seconds a Lease lasts unrenewed.
    #[arg(long, env = "ARENA_LEASE_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    lease_secs: u64,
    /// `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, env = "ARENA_METRICS_ADDR", default_value = "0.0.0.0:7300")]
    metrics_addr: SocketAddr,
    /// Seconds between two looks at a fleet when nothing changes.
    #[arg(long, env = "ARENA_SYNC_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    sync_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The operator logs what it decides and does (it runs unattended); the local fleet shows a
    // live table instead, and logs only what goes wrong.
    let default = if matches!(cli.command, Cmd::Operator(_)) { "info" } else { "warn,arena_fleet=warn" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let code = rt.block_on(run(cli))?;
    std::process::exit(code);
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Cmd::Operator(a) => {
            arena_fleet::operator::run(arena_fleet::operator::OperatorConfig {
                namespace: a.namespace,
                identity: a.identity,
                allocators: a.allocator_url,
                api_key: a.api_key,
                server_key: a.server_key,
                pod_template: a.pod_template,
                lease_name: a.lease_name,
                lease_duration: Duration::from_secs(a.lease_secs),
                listen: a.metrics_addr,
                sync: Duration::from_secs(a.sync_secs),
            })
            .await?;
            Ok(0)
        }
        Cmd::Crd => {
            print!("{}", arena_fleet::crd::crd_yaml());
            Ok(0)
        }
        Cmd::Spec { check: None } => {
            print!("{}", FleetSpec::embedded_default().to_yaml());
            Ok(0)
        }
        Cmd::Spec { check: Some(path) } => {
            let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
            match FleetSpec::parse(&text, &path.to_string_lossy()) {
                Ok(spec) => {
                    println!("{}: {} regions, valid", path.display(), spec.regions.len());
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(1)
                }
            }
        }
        Cmd::Status { url, json } => {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
            let status: FleetStatus = client
                .get(format!("{}/v1/fleets", url.trim_end_matches('/')))
                .send()
                .await
                .with_context(|| format!("no fleet answers at {url}"))?
                .error_for_status()?
                .json()
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.table());
            }
            Ok(0)
        }
        Cmd::Up(a) => {
            let a = *a;
            let (spec, spec_file) = match &a.spec {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
                    (FleetSpec::parse(&text, &path.to_string_lossy()).map_err(anyhow::Error::msg)?, Some(path.clone()))
                }
                None => (FleetSpec::embedded_default(), None),
            };
            let log_dir =
                a.log_dir.unwrap_or_else(|| std::env::temp_dir().join(format!("arena-fleet-{}", std::process::id())));
            let local = LocalConfig::beside_me(a.gameserver_bin, a.allocator_bin, log_dir.clone())?;
            let loadtest = a.loadtest.map(|s| s.split_whitespace().map(str::to_owned).collect());
            up(UpConfig {
                spec,
                spec_file,
                listen: a.listen,
                allocator_listen: a.allocator_listen,
                log_dir,
                local,
                api_key: a.api_key,
                fleet_key: a.fleet_key,
                loadtest,
                loadtest_bin: a.loadtest_bin,
                report_dir: a.report_dir,
                settle: Duration::from_secs(a.settle_secs),
                ready_file: a.ready_file,
                quiet: a.quiet,
            })
            .await
        }
    }
}
