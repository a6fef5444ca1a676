//! `arena-fleet up`: a local fleet — the allocator and every region's gameservers as processes
//! on this machine — sized and healed by the controller every sync period, with the HTTP API,
//! a live status view, and optionally a load test that ramps into it, after which the fleet
//! waits to be back at its minimum and writes its scaling timeline beside the load test's report.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use arena_service::http::HttpLimits;
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiState, Published, router};
use crate::chart;
use crate::controller::Controller;
use crate::local::{LocalAllocator, LocalBackend, LocalConfig};
use crate::metrics::Metrics;
use crate::spec::FleetSpec;
use crate::status::{Timeline, p50_max};

/// How `up` runs.
#[derive(Debug, Clone)]
pub struct UpConfig {
    pub spec: FleetSpec,
    /// The file the description came from: re-read when it changes.
    pub spec_file: Option<PathBuf>,
    pub listen: SocketAddr,
    pub allocator_listen: String,
    pub log_dir: PathBuf,
    pub local: LocalConfig,
    /// Allocator API key (to read its view; the load test allocates with it).
    pub api_key: String,
    /// Key for `PUT /v1/fleets/spec`.
    pub fleet_key: String,
    /// Arguments for `arena-loadtest`, run once the fleet is ready.
    pub loadtest: Option<Vec<String>>,
    pub loadtest_bin: Option<PathBuf>,
    /// Where the load test's report and the fleet's timeline go.
    pub report_dir: PathBuf,
    /// How long to wait, after the load test, for every region to be back at its minimum.
    pub settle: Duration,
    pub ready_file: Option<PathBuf>,
    pub quiet: bool,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Run the fleet until SIGTERM or Ctrl-C (or, with a load test, until it ran and the fleet
/// settled). The exit code.
pub async fn up(cfg: UpConfig) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&cfg.log_dir)?;
    let allocator = LocalAllocator::start(&cfg.local, &cfg.spec.allocator, &cfg.allocator_listen).await?;
    eprintln!("arena-fleet: allocator at {} (logs in {})", allocator.url, cfg.log_dir.display());
    let metrics = Arc::new(Metrics::new());
    let backend = LocalBackend::new(cfg.local.clone());
    let mut ctl = Controller::new(
        cfg.spec.clone(),
        backend,
        vec![allocator.url.clone()],
        cfg.api_key.clone(),
        Arc::clone(&metrics),
        now_ms(),
    );
    // The servers inherit this environment: they report with this key, and so can the fleet
    // for a server that died.
    ctl.set_server_key(std::env::var("ARENA_SERVER_KEY").unwrap_or_else(|_| "arena-dev-key".to_owned()));

    let (tx, mut changes) = mpsc::channel(1);
    let api = Arc::new(ApiState {
        published: RwLock::new(Published { spec: Some(cfg.spec.clone()), ..Published::default() }),
        metrics,
        changes: tx,
        key: cfg.fleet_key.clone(),
    });
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let api_addr = listener.local_addr()?;
    let stop_api = CancellationToken::new();
    let server = tokio::spawn(arena_service::http::serve(
        listener,
        router(Arc::clone(&api)),
        HttpLimits { max_connections: 256, ..HttpLimits::default() },
        stop_api.clone(),
        None,
    ));
    eprintln!("arena-fleet: API at http://{api_addr}/v1/fleets");

    let tty = std::io::stderr().is_terminal() && !cfg.quiet;
    let period = Duration::from_millis(cfg.spec.sync_period_ms);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut spec_seen = cfg.spec_file.as_deref().and_then(mtime);
    let terminate = arena_service::signal::terminate();
    tokio::pin!(terminate);
    let mut loadtest: Option<tokio::process::Child> = None;
    let mut loadtest_code: Option<i32> = None;
    let mut loadtest_ended_ms: Option<u64> = None;
    let mut settled_ms: Option<u64> = None;
    let mut announced_ready = false;
    let mut last_line_ms = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Some((spec, reply)) = changes.recv() => {
                let _ = reply.send(ctl.set_spec(spec, now_ms()).map_err(|e| e.0));
                continue;
            }
            () = &mut terminate => break,
        }
        // A changed description file is applied (an invalid one is reported and ignored).
        if let Some(path) = &cfg.spec_file
            && mtime(path) != spec_seen
        {
            spec_seen = mtime(path);
            let read = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| FleetSpec::parse(&text, &path.to_string_lossy()).map_err(|e| e.0));
            match read.and_then(|spec| ctl.set_spec(spec, now_ms()).map_err(|e| e.0)) {
                Ok(()) => eprintln!("arena-fleet: applied the changed {}", path.display()),
                Err(e) => eprintln!("arena-fleet: {} not applied: {e}", path.display()),
            }
        }
        let now = now_ms();
        ctl.sync(now).await;
        let status = ctl.status(now);
        let ready = ctl.ready();
        {
            let mut p = api.published.write();
            p.status = status.clone();
            p.timeline = ctl.timeline();
            p.spec = Some(ctl.spec().clone());
            p.ready = ready;
        }
        if ready && !announced_ready {
            announced_ready = true;
            eprintln!("arena-fleet: every region is serving");
            if let Some(path) = &cfg.ready_file {
                let info = serde_json::json!({
                    "api": api_addr,
                    "allocator": allocator.url,
                    "log_dir": cfg.log_dir,
                    "pid": std::process::id(),
                });
                arena_service::ready::write(path, &info)?;
            }
            if let Some(args) = &cfg.loadtest {
                loadtest = Some(start_loadtest(&cfg, args, &allocator.url)?);
            }
        }
        if tty {
            eprint!("\x1b[H\x1b[2J{}", status.table());
        } else if !cfg.quiet && now >= last_line_ms + 10_000 {
            last_line_ms = now;
            for r in &status.regions {
                eprintln!(
                    "arena-fleet: {:.0} s {}: {} wanted, {} serving, {} starting, {} draining, seats {}/{}",
                    status.uptime_s, r.name, r.desired, r.ready, r.starting, r.draining, r.seats_used, r.seats
                );
            }
        }
        if let Some(child) = &mut loadtest
            && let Ok(Some(exit)) = child.try_wait()
        {
            loadtest_code = Some(exit.code().unwrap_or(1));
            loadtest_ended_ms = Some(now);
            loadtest = None;
            eprintln!("arena-fleet: the load test ended; waiting for every region to be back at its minimum");
        }
        if let Some(ended) = loadtest_ended_ms {
            if ctl.settled() {
                settled_ms = Some(now - ended);
                break;
            }
            if now >= ended + cfg.settle.as_millis() as u64 {
                break;
            }
        }
    }

    if let Some(mut child) = loadtest.take() {
        let _ = child.kill().await;
    }
    eprintln!("arena-fleet: draining every server");
    let timeline = ctl.timeline();
    let mut backend = ctl.into_backend();
    backend.drain_all(Duration::from_secs(30)).await;
    allocator.stop(Duration::from_secs(10)).await;
    stop_api.cancel();
    let _ = server.await;

    std::fs::create_dir_all(&cfg.report_dir)?;
    let json_path = cfg.report_dir.join("fleet-timeline.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&timeline)?)?;
    let svg_path = cfg.report_dir.join("fleet-timeline.svg");
    std::fs::write(&svg_path, chart::svg(&timeline, "arena-fleet: servers and seats per region"))?;
    print!("{}", summary(&timeline, loadtest_ended_ms.is_some(), settled_ms));
    println!("fleet timeline: {} and {}", json_path.display(), svg_path.display());
    Ok(match (loadtest_code, settled_ms) {
        (Some(code), _) if code != 0 => code,
        (Some(_), None) => {
            eprintln!(
                "arena-fleet: the fleet was not back at its minimum {} s after the load test",
                cfg.settle.as_secs()
            );
            1
        }
        _ => 0,
    })
}

fn start_loadtest(cfg: &UpConfig, args: &[String], allocator: &str) -> anyhow::Result<tokio::process::Child> {
    let bin = match &cfg.loadtest_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("arena-loadtest"),
    };
    std::fs::create_dir_all(&cfg.report_dir)?;
    let report = cfg.report_dir.join("loadtest.json");
    eprintln!("arena-fleet: starting arena-loadtest {}", args.join(" "));
    tokio::process::Command::new(&bin)
        .args(["--allocator", allocator, "--api-key", &cfg.api_key, "--quiet", "--report-json"])
        .arg(&report)
        .args(args)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// What the fleet did, in a few lines.
pub fn summary(t: &Timeline, had_loadtest: bool, settled_after_ms: Option<u64>) -> String {
    let count = |kind: &str| t.events.iter().filter(|e| e.kind == kind).count();
    let scale_ups = t.events.iter().filter(|e| e.kind == "scale" && is_up(&e.detail)).count();
    let scale_downs = count("scale") - scale_ups;
    let secs = |kind: &str| -> Vec<f64> { t.events.iter().filter(|e| e.kind == kind).filter_map(|e| e.secs).collect() };
    let (reg_p50, reg_max) = p50_max(&secs("registered"));
    let (seat_p50, seat_max) = p50_max(&secs("first_seats"));
    let mut o = String::new();
    o.push_str(&format!(
        "fleet: {scale_ups} scale-ups, {scale_downs} scale-downs, {} servers started, {} drained, {} crashed\n",
        count("start"),
        count("drain"),
        count("crashed")
    ));
    o.push_str(&format!(
        "  decision → server taking bots: p50 {reg_p50:.1} s, max {reg_max:.1} s; → its first seat: p50 {seat_p50:.1} s, max {seat_max:.1} s ({} servers)\n",
        secs("first_seats").len()
    ));
    if had_loadtest {
        match settled_after_ms {
            Some(ms) => {
                o.push_str(&format!("  back at its minimum {:.1} s after the load test ended\n", ms as f64 / 1000.0))
            }
            None => o.push_str("  NOT back at its minimum when it stopped waiting\n"),
        }
    }
    o
}

/// Whether a `scale` event's detail (`"a → b by …"`) grew the fleet.
fn is_up(detail: &str) -> bool {
    let mut nums = detail.split(" by ").next().unwrap_or("").split(" → ").map(|n| n.trim().parse::<u32>().unwrap_or(0));
    let (from, to) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    to > from
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Event;

    #[test]
    fn the_summary_counts_what_happened() {
        let ev = |kind: &str, detail: &str, secs: Option<f64>| Event {
            t_s: 1.0,
            region: "a".into(),
            kind: kind.into(),
            server: None,
            detail: detail.into(),
            secs,
        };
        let t = Timeline {
            samples: vec![],
            events: vec![
                ev("scale", "1 → 3 by buffer: x", None),
                ev("start", "", None),
                ev("start", "", None),
                ev("registered", "", Some(0.8)),
                ev("registered", "", Some(1.2)),
                ev("first_seats", "", Some(1.0)),
                ev("first_seats", "", Some(2.5)),
                ev("scale", "3 → 1 by buffer: y", None),
                ev("drain", "", None),
            ],
        };
        let s = summary(&t, true, Some(12_300));
        assert!(s.starts_with("fleet: 1 scale-ups, 1 scale-downs, 2 servers started, 1 drained, 0 crashed"), "{s}");
        assert!(
            s.contains("taking bots: p50 0.8 s, max 1.2 s; → its first seat: p50 1.0 s, max 2.5 s (2 servers)"),
            "{s}"
        );
        assert!(s.contains("back at its minimum 12.3 s after"), "{s}");
    }
}
