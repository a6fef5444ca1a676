//! `arena-loadtest`: a swarm of bots against Arena gameservers, with a report and SLO checks.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use arena_loadtest::bot::{Behaviour, Seated, Swarm};
use arena_loadtest::engine::{self, EngineHandle, Lost};
use arena_loadtest::local::{LocalProcess, sibling_binary, start_allocator, start_gameserver, wait_registered};
use arena_loadtest::procstat::{ProcSample, sample};
use arena_loadtest::quicplay::{self, QuicClients};
use arena_loadtest::report::{Point, ProcReport, Report};
use arena_loadtest::stats::{Percentiles, Stats};
use arena_loadtest::target::{Direct, DirectServer, Target, ViaAllocator, parse_ws_url};
use arena_sdk::Encoding;
use arena_sdk::ticket::TicketKey;
use clap::{Parser, ValueEnum};
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "arena-loadtest", version, about = "Drive a swarm of bots against Arena and report what they saw")]
struct Cli {
    /// Start the stack as child processes on loopback — an allocator (in-memory registry) and
    /// --servers gameservers reporting to it (the binaries beside this one) — and play through it.
    #[arg(long, conflicts_with_all = ["allocator", "gameservers"])]
    local: bool,
    /// An existing allocator to get seats from (e.g. http://127.0.0.1:7100).
    #[arg(long, conflicts_with = "gameservers")]
    allocator: Option<String>,
    /// API key for the allocator.
    #[arg(long, env = "ARENA_API_KEY", default_value = "arena-dev-key")]
    api_key: String,
    /// Gameserver URL(s) to target directly, without an allocator (tickets minted with
    /// ARENA_TICKET_KEY, or the development key): ws://host:port/ws, or quic://host:port with
    /// --transport quic. World w goes to the (w mod n)-th URL.
    #[arg(long = "gameserver", required_unless_present_any = ["local", "allocator"])]
    gameservers: Vec<String>,
    /// Certificate SHA-256 (hex) of each quic:// --gameserver, in the same order.
    #[arg(long = "quic-cert-sha256")]
    quic_pins: Vec<String>,
    /// What bots connect over. With --local, gameservers also serve QUIC; through an allocator,
    /// bots use the QUIC endpoint and certificate hash of their allocation.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// UDP sockets (client endpoints) the QUIC bots share.
    #[arg(long, default_value_t = 4)]
    quic_sockets: usize,
    /// Server ids matching --gameserver, to bind tickets to them.
    #[arg(long = "server-id")]
    server_ids: Vec<String>,
    /// PIDs of server processes to report CPU and memory for (with --gameserver).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Number of bots.
    #[arg(long, default_value_t = 10_000)]
    bots: usize,
    /// Bots started per second.
    #[arg(long, default_value_t = 1000.0)]
    ramp_per_sec: f64,
    /// Seconds to hold the full swarm after the ramp.
    #[arg(long, default_value_t = 60.0)]
    duration_secs: f64,
    /// Inputs per bot per second (open loop).
    #[arg(long, default_value_t = 2.0)]
    inputs_per_sec: f64,
    /// Bots per world.
    #[arg(long, default_value_t = 30)]
    bots_per_world: usize,
    /// Share of moves in the input mix.
    #[arg(long, default_value_t = 0.5)]
    move_share: f64,
    /// Share of chat lines in the input mix (the rest are acts).
    #[arg(long, default_value_t = 0.3)]
    say_share: f64,
    /// Extra arguments for each gameserver started with --local (e.g. "--database-url postgres://…").
    #[arg(long, allow_hyphen_values = true)]
    gameserver_args: Option<String>,
    #[arg(long, value_enum, default_value_t = Enc::Msgpack)]
    encoding: Enc,
    /// Gameserver processes to start with --local.
    #[arg(long, default_value_t = 1)]
    servers: usize,
    /// Path of arena-gameserver for --local.
    #[arg(long)]
    gameserver_bin: Option<PathBuf>,
    /// Path of arena-allocator for --local.
    #[arg(long)]
    allocator_bin: Option<PathBuf>,
    /// Write the report as JSON here (and an SVG chart beside it unless --report-svg is given).
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// Write the SVG chart here.
    #[arg(long)]
    report_svg: Option<PathBuf>,
    /// Fail if p99 input → acknowledged update exceeds this many ms.
    #[arg(long)]
    max_p99_ms: Option<f64>,
    /// Fail if p99 join time exceeds this many ms.
    #[arg(long)]
    max_join_p99_ms: Option<f64>,
    /// Fail if more errors than this were seen.
    #[arg(long)]
    max_errors: Option<u64>,
    /// Fail if more bots than this came back without their own seat after losing it.
    #[arg(long)]
    max_seats_lost: Option<u64>,
    /// Fail if fewer bots than this joined (default: all).
    #[arg(long)]
    min_joined: Option<u64>,
    /// Worker threads of the swarm (default: one per core).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
    /// Play engine threads (each drives its share of the bots).
    #[arg(long, default_value_t = 1)]
    engines: usize,
    /// Milliseconds a play engine gathers socket events before handling them (0: as they come).
    #[arg(long, default_value_t = 1.0)]
    batch_ms: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Transport {
    Ws,
    Quic,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Enc {
    Msgpack,
    Json,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cli.worker_threads {
        rt.worker_threads(n.max(1));
    }
    let code = rt.build()?.block_on(run(cli))?;
    std::process::exit(code);
}

/// A process under watch, with the readings that frame the hold phase.
struct Watched {
    name: String,
    pid: u32,
    baseline: Option<ProcSample>,
    hold_start: Option<ProcSample>,
    hold_end: Option<ProcSample>,
    last: Option<ProcSample>,
    peak_rss: u64,
}

impl Watched {
    fn new(name: String, pid: u32) -> Self {
        let s = sample(pid);
        Watched { name, pid, baseline: s, hold_start: None, hold_end: None, last: s, peak_rss: 0 }
    }

    fn poll(&mut self) -> Option<ProcSample> {
        let s = sample(self.pid)?;
        self.peak_rss = self.peak_rss.max(s.rss_bytes);
        self.last = Some(s);
        Some(s)
    }

    fn report(&self, bots: i64, hold: Duration) -> ProcReport {
        let cpu = |s: Option<ProcSample>| s.map_or(0.0, |s| s.cpu.as_secs_f64());
        let hold_cpu = cpu(self.hold_end) - cpu(self.hold_start);
        let loaded = self.hold_end.map_or(0, |s| s.rss_bytes);
        let baseline = self.baseline.map_or(0, |s| s.rss_bytes);
        let per = |b: u64| if bots > 0 { b as f64 / bots as f64 } else { 0.0 };
        ProcReport {
            name: self.name.clone(),
            pid: self.pid,
            hold_cpu_seconds: hold_cpu,
            hold_cores: hold_cpu / hold.as_secs_f64().max(1e-9),
            cpu_seconds: cpu(self.last) - cpu(self.baseline),
            peak_rss_bytes: self.peak_rss.max(self.last.map_or(0, |s| s.peak_rss_bytes)),
            baseline_rss_bytes: baseline,
            loaded_rss_bytes: loaded,
            rss_per_bot_bytes: per(loaded),
            added_rss_per_bot_bytes: per(loaded.saturating_sub(baseline)),
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let encoding = match cli.encoding {
        Enc::Msgpack => Encoding::MsgPack,
        Enc::Json => Encoding::Json,
    };
    let key = match std::env::var("ARENA_TICKET_KEY") {
        Ok(spec) => TicketKey::parse(&spec).context("ARENA_TICKET_KEY")?,
        Err(_) => TicketKey::development(),
    };
    let log_dir = std::env::temp_dir().join(format!("arena-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir)?;

    let mut local: Vec<LocalProcess> = Vec::new();
    let mut watched = Vec::new();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        .build()
        .context("HTTP client")?;
    let target = if cli.local {
        let gs_bin = sibling_binary(cli.gameserver_bin.as_deref(), "arena-gameserver")?;
        let alloc_bin = sibling_binary(cli.allocator_bin.as_deref(), "arena-allocator")?;
        let (allocator, url) = start_allocator(&alloc_bin, &log_dir).await?;
        watched.push(Watched::new(allocator.name.clone(), allocator.pid));
        local.push(allocator);
        let worlds = cli.bots.div_ceil(cli.bots_per_world.max(1));
        let per_server = worlds.div_ceil(cli.servers.max(1)).max(1);
        for i in 0..cli.servers.max(1) {
            let mut extra: Vec<String> =
                cli.gameserver_args.as_deref().unwrap_or("").split_whitespace().map(str::to_owned).collect();
            if cli.transport == Transport::Quic {
                extra.extend(["--quic-addr".into(), "127.0.0.1:0".into()]);
            }
            let p = start_gameserver(&gs_bin, i, per_server, &log_dir, &url, &extra).await?;
            watched.push(Watched::new(p.name.clone(), p.pid));
            local.push(p);
        }
        wait_registered(&url, &cli.api_key, cli.servers.max(1)).await?;
        eprintln!("started an allocator and {} gameserver(s); logs in {}", cli.servers.max(1), log_dir.display());
        Target::Allocator(ViaAllocator { url, key: cli.api_key.clone(), http })
    } else if let Some(url) = &cli.allocator {
        Target::Allocator(ViaAllocator { url: url.trim_end_matches('/').to_owned(), key: cli.api_key.clone(), http })
    } else {
        let mut servers = Vec::new();
        for (i, url) in cli.gameservers.iter().enumerate() {
            let id = cli.server_ids.get(i).cloned();
            if url.starts_with("quic://") {
                let addr = quicplay::parse_quic_url(url).map_err(anyhow::Error::msg)?;
                let pin = cli.quic_pins.get(i).cloned().with_context(|| format!("{url}: no --quic-cert-sha256"))?;
                servers.push(DirectServer { addr, path: String::new(), id, quic: Some((addr, pin)) });
            } else {
                let (addr, path) = parse_ws_url(url).map_err(anyhow::Error::msg)?;
                servers.push(DirectServer { addr, path, id, quic: None });
            }
        }
        Target::Direct(Direct { servers, key, bots_per_world: cli.bots_per_world })
    };
    for (i, pid) in cli.server_pids.iter().enumerate() {
        watched.push(Watched::new(format!("server-{i}"), *pid));
    }
    let mut me = Watched::new("loadtester".into(), std::process::id());

    let stats = Arc::new(Stats::default());
    let swarm = Arc::new(Swarm {
        target,
        behaviour: Behaviour {
            encoding,
            inputs_per_sec: cli.inputs_per_sec,
            move_share: cli.move_share.clamp(0.0, 1.0),
            say_share: cli.say_share.clamp(0.0, 1.0 - cli.move_share.clamp(0.0, 1.0)),
            bots_per_world: cli.bots_per_world,
            connect_timeout: Duration::from_secs(10),
            join_attempts: 5,
            refusal_attempts: 3,
        },
        stats: Arc::clone(&stats),
        quic: match cli.transport {
            Transport::Ws => None,
            Transport::Quic => Some(QuicClients::new(cli.quic_sockets, encoding).context("QUIC client endpoints")?),
        },
    });

    let stop = Arc::new(AtomicBool::new(false));
    let (lost_tx, mut lost_rx) = tokio::sync::mpsc::unbounded_channel();
    let batch = Duration::from_secs_f64(cli.batch_ms.max(0.0) / 1000.0);
    let mut engines = Vec::new();
    for _ in 0..cli.engines.max(1) {
        engines.push(engine::start(Arc::clone(&swarm), lost_tx.clone(), Arc::clone(&stop), batch)?);
    }
    let engines = Arc::new(engines);
    let t0 = Instant::now() + Duration::from_millis(100);
    let ramp = Duration::from_secs_f64(cli.bots as f64 / cli.ramp_per_sec.max(0.001));
    let settled = Arc::new(AtomicUsize::new(0));
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..cli.bots {
        let start = t0 + Duration::from_secs_f64(i as f64 / cli.ramp_per_sec.max(0.001));
        let (swarm, engines, stop, settled, lost) =
            (Arc::clone(&swarm), Arc::clone(&engines), Arc::clone(&stop), Arc::clone(&settled), lost_tx.clone());
        joins.spawn(async move {
            if let Some(p) = Arc::clone(&swarm).join_bot(i, start, Arc::clone(&stop)).await {
                play(&swarm, &engines, &lost, &stop, p);
            }
            settled.fetch_add(1, Ordering::Relaxed);
        });
    }
    // Lost connections come back here: resume, or join afresh, then play on.
    let rejoiner = {
        let (swarm, engines, stop, lost) =
            (Arc::clone(&swarm), Arc::clone(&engines), Arc::clone(&stop), lost_tx.clone());
        tokio::spawn(async move {
            while let Some((seat, why)) = lost_rx.recv().await {
                if stop.load(Ordering::Relaxed) {
                    continue;
                }
                if arena_loadtest::bot::moved(&why) {
                    swarm.stats.moved.fetch_add(1, Ordering::Relaxed);
                } else {
                    swarm.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                    swarm.stats.error(why.clone());
                }
                let (swarm, engines, stop, lost) =
                    (Arc::clone(&swarm), Arc::clone(&engines), Arc::clone(&stop), lost.clone());
                tokio::spawn(async move {
                    if let Some(p) = Arc::clone(&swarm).rejoin(seat, &why, Arc::clone(&stop)).await {
                        play(&swarm, &engines, &lost, &stop, p);
                    }
                });
            }
        })
    };

    let hold = Duration::from_secs_f64(cli.duration_secs.max(0.0));
    let tty = std::io::stderr().is_terminal() && !cli.quiet;
    let mut timeline = Vec::new();
    let mut hold_start: Option<Instant> = None;
    let mut counters_at_hold = std::collections::BTreeMap::new();
    let mut ticker = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    let mut prev_updates = 0u64;
    let mut prev_cpu: Vec<Option<ProcSample>> = watched.iter().map(|w| w.last).collect();
    let mut prev_me = me.last;
    let max_settle = Duration::from_secs(10);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let window = stats.take_window();
        let updates = stats.updates.load(Ordering::Relaxed);
        let joined = stats.joined.load(Ordering::Relaxed);
        let mut server_cores = 0.0;
        for (w, prev) in watched.iter_mut().zip(prev_cpu.iter_mut()) {
            if let Some(s) = w.poll() {
                if let Some(p) = prev {
                    server_cores += (s.cpu - p.cpu).as_secs_f64();
                }
                *prev = Some(s);
            }
        }
        let me_now = me.poll();
        let loadtest_cores = match (me_now, prev_me) {
            (Some(a), Some(b)) => (a.cpu - b.cpu).as_secs_f64(),
            _ => 0.0,
        };
        prev_me = me_now;
        let w = Percentiles::of(&window.window_input_ack);
        let join = Percentiles::of(&window.join_total);
        let point = Point {
            t_s: (now - t0).as_secs_f64(),
            joined,
            updates_per_s: (updates - prev_updates) as f64,
            input_ack_p50_ms: w.p50,
            input_ack_p99_ms: w.p99,
            join_p99_ms: join.p99,
            errors: stats.error_count(),
            server_cores,
            loadtest_cores,
        };
        prev_updates = updates;
        if !cli.quiet {
            let line = format!(
                "[{:>6.1}s] joined {:>6}/{} | input→ack p50 {:>6.1} p99 {:>6.1} ms | join p99 {:>6.1} ms | {:>7.0} upd/s | errors {} | server {:.2} cores, loadtest {:.2} cores",
                point.t_s,
                joined,
                cli.bots,
                w.p50,
                w.p99,
                join.p99,
                point.updates_per_s,
                point.errors,
                server_cores,
                loadtest_cores
            );
            if tty {
                eprint!("\r{line}\x1b[K");
            } else if timeline.len() % 5 == 0 {
                eprintln!("{line}");
            }
        }
        timeline.push(point);

        let ramp_done = now >= t0 + ramp;
        let all_in = joined as usize >= cli.bots || settled.load(Ordering::Relaxed) >= cli.bots;
        if hold_start.is_none() && ramp_done && (all_in || now >= t0 + ramp + max_settle) {
            hold_start = Some(now);
            counters_at_hold = sum_counters(&local).await;
            for w in &mut watched {
                w.hold_start = w.poll();
            }
            me.hold_start = me.poll();
        }
        if let Some(h) = hold_start
            && now >= h + hold
        {
            break;
        }
    }
    if tty {
        eprintln!();
    }
    let hold_started = hold_start.unwrap_or(t0);
    let held = Instant::now() - hold_started;
    let counters_end = sum_counters(&local).await;
    let server_counters_per_s = counters_end
        .iter()
        .map(|(k, v)| (k.clone(), (v - counters_at_hold.get(k).copied().unwrap_or(0.0)) / held.as_secs_f64().max(1e-9)))
        .collect();
    for w in &mut watched {
        w.hold_end = w.poll();
    }
    me.hold_end = me.poll();
    let joined_at_end = stats.joined.load(Ordering::Relaxed);
    let leaked_reservations = match &swarm.target {
        Target::Allocator(a) if cli.local => Some(leaked_reservations(a, &local).await),
        _ => None,
    };

    stop.store(true, Ordering::Relaxed);
    joins.abort_all();
    let leaving = Arc::clone(&engines);
    let _ = tokio::task::spawn_blocking(move || leaving.iter().for_each(engine::EngineHandle::join)).await;
    if let Some(clients) = &swarm.quic {
        // QUIC bots see the stop within a second and leave (close 1000); let the closes go out.
        let left = Instant::now() + Duration::from_secs(3);
        while stats.joined.load(Ordering::Relaxed) > 0 && Instant::now() < left {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        clients.wait_idle(Duration::from_secs(2)).await;
    }
    rejoiner.abort();
    let run_time = Instant::now() - t0;
    // Gameservers drain first, then the allocator they report to.
    for p in local.into_iter().rev() {
        p.stop(Duration::from_secs(15)).await;
    }

    let h = stats.hists();
    let secs = run_time.as_secs_f64().max(1e-9);
    let mut report = Report {
        bots: cli.bots,
        joined: stats.ever_joined.load(Ordering::Relaxed),
        joined_at_end,
        encoding: encoding.subprotocol().to_owned(),
        transport: match cli.transport {
            Transport::Ws => "ws".into(),
            Transport::Quic => "quic".into(),
        },
        inputs_per_bot_per_s: cli.inputs_per_sec,
        ramp_per_s: cli.ramp_per_sec,
        ramp_s: ramp.as_secs_f64(),
        hold_s: held.as_secs_f64(),
        duration_s: secs,
        errors: stats.error_count(),
        errors_by_kind: stats.errors(),
        refused: stats.refusals().values().sum(),
        refused_by_kind: stats.refusals(),
        leaked_reservations,
        disconnects: stats.disconnects.load(Ordering::Relaxed),
        moved: stats.moved.load(Ordering::Relaxed),
        seats_kept: stats.seats_kept.load(Ordering::Relaxed),
        seats_lost: stats.seats_lost.load(Ordering::Relaxed),
        reconnects: stats.reconnects.load(Ordering::Relaxed),
        tick_gaps: stats.gaps.load(Ordering::Relaxed),
        unacked_inputs: stats.unacked.load(Ordering::Relaxed),
        join_ms: Percentiles::of(&h.join_total),
        join_alloc_ms: Percentiles::of(&h.join_alloc),
        join_connect_ms: Percentiles::of(&h.join_connect),
        join_welcome_ms: Percentiles::of(&h.join_welcome),
        input_ack_ms: Percentiles::of(&h.input_ack),
        update_interarrival_ms: Percentiles::of(&h.interarrival),
        updates_per_s: stats.updates.load(Ordering::Relaxed) as f64 / secs,
        inputs_per_s: stats.inputs.load(Ordering::Relaxed) as f64 / secs,
        bytes_in_per_s: stats.bytes_in.load(Ordering::Relaxed) as f64 / secs,
        bytes_out_per_s: stats.bytes_out.load(Ordering::Relaxed) as f64 / secs,
        servers: watched.iter().map(|w| w.report(joined_at_end, held)).collect(),
        loadtester: Some(me.report(joined_at_end, held)),
        server_counters_per_s,
        slo_failures: Vec::new(),
        timeline,
    };
    let min_joined = cli.min_joined.unwrap_or(cli.bots as u64);
    if report.joined < min_joined {
        report.slo_failures.push(format!("{} bots joined, fewer than {min_joined}", report.joined));
    }
    // A bot the fleet had no room for must hear so: every bot is seated or refused.
    let unanswered = (cli.bots as u64).saturating_sub(report.joined + report.refused);
    if unanswered > 0 {
        report.slo_failures.push(format!("{unanswered} bots neither seated nor refused"));
    }
    if let Some(n) = report.leaked_reservations
        && n > 0
    {
        report.slo_failures.push(format!("{n} seats reserved at the allocator that no gameserver holds"));
    }
    if let Some(max) = cli.max_p99_ms
        && report.input_ack_ms.p99 > max
    {
        report.slo_failures.push(format!("p99 input→ack {:.1} ms > {max} ms", report.input_ack_ms.p99));
    }
    if let Some(max) = cli.max_join_p99_ms
        && report.join_ms.p99 > max
    {
        report.slo_failures.push(format!("p99 join {:.1} ms > {max} ms", report.join_ms.p99));
    }
    if let Some(max) = cli.max_errors
        && report.errors > max
    {
        report.slo_failures.push(format!("{} errors > {max}", report.errors));
    }
    if let Some(max) = cli.max_seats_lost
        && report.seats_lost > max
    {
        report.slo_failures.push(format!("{} bots came back without their seat > {max}", report.seats_lost));
    }
    print!("{}", report.table());
    if let Some(path) = &cli.report_json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| path.display().to_string())?;
    }
    let svg_path = cli.report_svg.clone().or_else(|| cli.report_json.as_ref().map(|p| p.with_extension("svg")));
    if let Some(path) = svg_path {
        std::fs::write(&path, report.svg()).with_context(|| path.display().to_string())?;
    }
    Ok(if report.slo_failures.is_empty() { 0 } else { 1 })
}

/// Hand a seated bot to its player: a play engine for WebSocket, its own task for QUIC.
fn play(
    swarm: &Arc<Swarm>,
    engines: &Arc<Vec<EngineHandle>>,
    lost: &tokio::sync::mpsc::UnboundedSender<Lost>,
    stop: &Arc<AtomicBool>,
    seated: Seated,
) {
    match seated {
        Seated::Ws(p) => engines[p.seat.idx % engines.len()].add(p),
        Seated::Quic(p) => {
            tokio::spawn(quicplay::play(Arc::clone(swarm), p, lost.clone(), Arc::clone(stop)));
        }
    }
}

/// Seats the allocator counts beyond those the gameservers hold. Heartbeats carry the truth a
/// beat late, so this is the smallest difference seen over three readings a second apart: a
/// reservation in flight shows once, a leaked one every time.
async fn leaked_reservations(a: &ViaAllocator, procs: &[LocalProcess]) -> i64 {
    let mut least = i64::MAX;
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let used = async {
            let v: serde_json::Value =
                a.http.get(format!("{}/v1/servers", a.url)).bearer_auth(&a.key).send().await.ok()?.json().await.ok()?;
            Some(v.as_array()?.iter().filter_map(|s| s["seats_used"].as_i64()).sum::<i64>())
        };
        let Some(used) = used.await else { continue };
        let mut held = 0.0;
        for p in procs.iter().filter(|p| p.name.starts_with("gs-")) {
            held += arena_loadtest::local::gauge(p.http, "arena_seats").await.unwrap_or(0.0);
        }
        least = least.min(used - held as i64);
    }
    if least == i64::MAX { 0 } else { least }
}

/// The gameservers' counters, summed.
async fn sum_counters(procs: &[LocalProcess]) -> std::collections::BTreeMap<String, f64> {
    let mut sum = std::collections::BTreeMap::new();
    for p in procs.iter().filter(|p| p.name.starts_with("gs-")) {
        for (k, v) in arena_loadtest::local::counters(p.http).await {
            *sum.entry(k).or_insert(0.0) += v;
        }
    }
    sum
}
