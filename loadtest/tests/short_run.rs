//! A short load test through the whole stack, as CI runs it: `arena-loadtest --local` starts an
//! allocator and a gameserver as processes (the workspace's binaries; `scripts/test` builds
//! them), a few hundred bots play for a few seconds, the report is checked, and SLO options
//! decide the exit status.

use std::process::Command;

fn run(extra: &[&str], report: &std::path::Path) -> std::process::Output {
    run_with(extra, "--machine-cpu-target 0 --lateness-budget-ms 500", report)
}

fn run_with(extra: &[&str], gameserver_args: &str, report: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_arena-loadtest"))
        .args(["--local", "--bots", "240", "--ramp-per-sec", "400", "--duration-secs", "4", "--quiet"])
        .arg("--report-json")
        .arg(report)
        // The suite runs tests side by side on a small machine, busy by design: a gameserver
        // watching the machine's CPU would refuse bots (as `testkit` and the fleet tests do).
        .args(["--gameserver-args", gameserver_args])
        .args(extra)
        .output()
        .expect("run arena-loadtest")
}

#[test]
fn a_few_hundred_bots_play_and_the_report_says_so() {
    let dir = std::env::temp_dir().join(format!("arena-short-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.json");
    // Generous bounds: this is a debug build on a shared 2-core machine.
    let out = run(&["--max-errors", "0", "--max-p99-ms", "500", "--max-join-p99-ms", "2000"], &report);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "arena-loadtest failed ({}):\n{stdout}\n{stderr}", out.status);

    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["bots"], 240);
    assert_eq!(r["joined"], 240, "{r}");
    assert_eq!(r["errors"], 0, "{}", r["errors_by_kind"]);
    assert_eq!(r["disconnects"], 0);
    assert!(r["duration_s"].as_f64().unwrap() >= 4.0);
    for key in ["join_ms", "input_ack_ms"] {
        for q in ["p50", "p95", "p99", "max"] {
            assert!(r[key][q].as_f64().is_some_and(|v| v > 0.0), "{key}.{q}: {}", r[key]);
        }
    }
    // Every input waits for the next tick: the median is within one tick interval.
    assert!(r["input_ack_ms"]["p50"].as_f64().unwrap() < 60.0, "{}", r["input_ack_ms"]);
    assert!(r["updates_per_s"].as_f64().unwrap() > 1000.0, "{}", r["updates_per_s"]);
    let servers = r["servers"].as_array().unwrap();
    assert!(servers.iter().any(|s| s["name"] == "gs-0" && s["cpu_seconds"].as_f64().unwrap() > 0.0), "{servers:?}");
    assert!(servers.iter().all(|s| s["peak_rss_bytes"].as_u64().unwrap() > 0));
    let svg = std::fs::read_to_string(report.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));

    // An SLO it cannot meet makes it fail.
    let strict = run(&["--max-p99-ms", "0.001"], &dir.join("strict.json"));
    assert_eq!(strict.status.code(), Some(1), "{}", String::from_utf8_lossy(&strict.stdout));
    assert!(String::from_utf8_lossy(&strict.stdout).contains("SLO FAILED"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_same_swarm_plays_over_quic_through_the_allocator() {
    let dir = std::env::temp_dir().join(format!("arena-short-run-quic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.json");
    let out =
        run(&["--transport", "quic", "--max-errors", "0", "--max-p99-ms", "500", "--max-join-p99-ms", "2000"], &report);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "arena-loadtest --transport quic failed ({}):\n{stdout}\n{stderr}", out.status);

    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["transport"], "quic");
    assert_eq!(r["joined"], 240, "{r}");
    assert_eq!((r["errors"].as_u64(), r["disconnects"].as_u64()), (Some(0), Some(0)), "{}", r["errors_by_kind"]);
    assert!(r["input_ack_ms"]["p50"].as_f64().is_some_and(|v| v > 0.0 && v < 60.0), "{}", r["input_ack_ms"]);
    assert!(r["updates_per_s"].as_f64().unwrap() > 1000.0, "{}", r["updates_per_s"]);
    // No seat is left reserved at the allocator that the gameserver does not hold.
    assert_eq!(r["leaked_reservations"], 0, "{r}");
    let _ = std::fs::remove_dir_all(&dir);
}
