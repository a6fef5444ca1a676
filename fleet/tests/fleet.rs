//! `arena-fleet up` as an operator runs it: real processes (the allocator, each region's
//! gameservers, the load tester), real sockets, the fleet's HTTP API. Each test gives the fleet
//! a small description (servers of 60 seats, a 250 ms sync period) so that it has to scale,
//! heal or update within seconds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arena_testkit::DEV_KEY;
use arena_testkit::http::eventually;
use arena_testkit::process::Proc;
use arena_testkit::stores::{clear_redis, redis_prefix, shared_redis, unique};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
struct FleetReady {
    api: String,
    allocator: String,
    log_dir: PathBuf,
}

/// A running `arena-fleet up`, stopped with SIGTERM (so that it drains its servers) when dropped.
struct Fleet {
    proc: Proc,
    api: String,
    allocator: String,
    log_dir: PathBuf,
    http: reqwest::Client,
}

impl Fleet {
    /// Start a fleet on `spec` (YAML), with `extra` arguments, and wait until it serves.
    async fn up(spec: &str, dir: &Path, extra: &[&str]) -> Fleet {
        std::fs::create_dir_all(dir).unwrap();
        let spec_file = dir.join("fleet.yaml");
        std::fs::write(&spec_file, spec).unwrap();
        let mut args: Vec<String> = vec![
            "up".into(),
            "--spec".into(),
            spec_file.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--allocator-listen".into(),
            "127.0.0.1:0".into(),
            "--log-dir".into(),
            dir.join("logs").display().to_string(),
            "--report-dir".into(),
            dir.join("report").display().to_string(),
            "--quiet".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut proc = Proc::spawn("arena-fleet", "fleet", &args, &[]);
        let ready: FleetReady = proc.ready().await;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        Fleet { proc, api: format!("http://{}", ready.api), allocator: ready.allocator, log_dir: ready.log_dir, http }
    }

    async fn status(&self) -> Value {
        let r = self.http.get(format!("{}/v1/fleets", self.api)).send().await.expect("GET /v1/fleets");
        r.json().await.expect("status JSON")
    }

    async fn region(&self, name: &str) -> Option<Value> {
        let s = self.status().await;
        s["regions"].as_array().unwrap().iter().find(|r| r["name"] == name).cloned()
    }

    /// Wait until `probe` holds for region `name`'s status.
    async fn until(&self, name: &str, what: &str, limit: Duration, probe: impl Fn(&Value) -> bool) -> Value {
        eventually(what, limit, || async { self.region(name).await.filter(|r| probe(r)) }).await
    }

    /// `POST /v1/allocations` for `bot` in `world`, retried while the allocator asks to (it
    /// places no named world for one server timeout after it starts): the server it was given.
    async fn allocate(&self, bot: &str, world: &str) -> String {
        let body = serde_json::json!({"bot_id": bot, "world_id": world});
        let url = format!("{}/v1/allocations", self.allocator);
        eventually("an allocation", Duration::from_secs(30), || async {
            let r = self.http.post(&url).bearer_auth(DEV_KEY).json(&body).send().await;
            let v: Value = r.ok()?.json().await.ok()?;
            match v["server_id"].as_str() {
                Some(id) => Some(id.to_owned()),
                None => {
                    assert_eq!(v["error"]["code"], "unavailable", "{v}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    None
                }
            }
        })
        .await
    }

    async fn put_spec(&self, yaml: &str, key: &str) -> (u16, Value) {
        let r = self
            .http
            .put(format!("{}/v1/fleets/spec", self.api))
            .bearer_auth(key)
            .header("content-type", "application/yaml")
            .body(yaml.to_owned())
            .timeout(Duration::from_secs(40))
            .send()
            .await
            .expect("PUT /v1/fleets/spec");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// The pid of one of its gameservers (from the ready file the server wrote).
    fn server_pid(&self, id: &str) -> u32 {
        let ready: Value =
            serde_json::from_slice(&std::fs::read(self.log_dir.join(format!("{id}.ready.json"))).unwrap()).unwrap();
        ready["pid"].as_u64().unwrap() as u32
    }

    async fn exited(&mut self, limit: Duration) -> i32 {
        match self.proc.exited(limit).await {
            Some(status) => status.code().unwrap_or(-1),
            None => panic!("the fleet did not stop within {limit:?}\n{}", self.proc.log()),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // SIGTERM: the fleet drains its servers and stops them before it exits.
        self.proc.terminate(Duration::from_secs(40));
    }
}

fn dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(unique(&format!("arena-fleet-{name}-")))
}

/// One region of servers with 2 worlds × 30 seats, keeping `buffer` seats free.
fn spec(region: &str, min: u32, max: u32, buffer: u32, version: &str, args: &[&str]) -> String {
    let args: Vec<String> = ["--machine-cpu-target", "0", "--lateness-budget-ms", "500"]
        .iter()
        .chain(args)
        .map(|a| format!("{a:?}"))
        .collect();
    format!(
        r#"
allocator: {{ serverTimeoutSecs: 3 }}
syncPeriodMs: 250
regions:
  - name: {region}
    minServers: {min}
    maxServers: {max}
    template: {{ maxWorlds: 2, worldCapacity: 30, version: "{version}", args: [{}] }}
    autoscale: {{ buffer: {{ unit: seats, size: {buffer} }} }}
    scaleDownDelaySecs: 3
    rollingUpdate: {{ maxSurge: 1, maxUnavailable: 0 }}
"#,
        args.join(", ")
    )
}

fn events(timeline: &Value, kind: &str) -> Vec<Value> {
    timeline["events"].as_array().unwrap().iter().filter(|e| e["kind"] == kind).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_grows_with_its_bots_and_shrinks_back_without_disconnecting_one() {
    let dir = dir("scale");
    // 150 bots, 60 seats a server and 30 seats kept free: at least three servers at the peak.
    let loadtest =
        "--bots 150 --ramp-per-sec 50 --duration-secs 6 --inputs-per-sec 1 --max-errors 0 --max-seats-lost 0";
    let mut fleet =
        Fleet::up(&spec("r", 1, 5, 30, "1", &[]), &dir, &["--loadtest", loadtest, "--settle-secs", "60"]).await;
    let code = fleet.exited(Duration::from_secs(150)).await;
    assert_eq!(code, 0, "the load test or the settling failed:\n{}", fleet.proc.log());

    let report: Value = serde_json::from_slice(&std::fs::read(dir.join("report/loadtest.json")).unwrap()).unwrap();
    assert_eq!(report["joined"], 150, "{report}");
    assert_eq!(report["errors"], 0, "{}", report["errors_by_kind"]);
    assert_eq!(report["disconnects"], 0, "no bot was disconnected by a scale-down");
    assert_eq!(report["moved"], 0, "no bot was moved either");

    let timeline: Value =
        serde_json::from_slice(&std::fs::read(dir.join("report/fleet-timeline.json")).unwrap()).unwrap();
    let samples = timeline["samples"].as_array().unwrap();
    let peak = samples.iter().map(|s| s["ready"].as_u64().unwrap()).max().unwrap();
    assert!(peak >= 3, "150 bots + 30 free seats need 3 servers of 60; the peak was {peak}");
    assert_eq!(samples.last().unwrap()["ready"], 1, "back at its minimum");
    assert!(events(&timeline, "crashed").is_empty(), "{:?}", events(&timeline, "crashed"));
    let drains = events(&timeline, "drain");
    assert!(drains.len() as u64 >= peak - 1, "{drains:?}");
    for d in &drains {
        assert!(d["detail"].as_str().unwrap().contains("empty"), "only empty servers are drained: {d}");
    }
    // Every scale-up took a server from the decision to its first bot in seconds.
    let first_seats = events(&timeline, "first_seats");
    assert!(first_seats.len() >= 2, "{first_seats:?}");
    for e in &first_seats {
        assert!(e["secs"].as_f64().unwrap() < 30.0, "{e}");
    }
    assert!(std::fs::read_to_string(dir.join("report/fleet-timeline.svg")).unwrap().starts_with("<svg"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_replaced_and_a_crash_loop_is_backed_off() {
    let dir = dir("crash");
    // A server timeout longer than this part of the test: only the fleet's word can move the
    // dead server's worlds in time.
    let slow_timeout = spec("r", 2, 2, 0, "1", &[]).replace("serverTimeoutSecs: 3", "serverTimeoutSecs: 15");
    let fleet = Fleet::up(&slow_timeout, &dir, &[]).await;
    fleet.until("r", "two servers serving", Duration::from_secs(30), |r| r["ready"] == 2).await;
    let victim = fleet.allocate("first", "crash-world").await;
    let pid = fleet.server_pid(&victim);
    assert!(std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let killed = std::time::Instant::now();

    // Replaced: two servers serve again, the victim is not among them, and the crash is told.
    let r = fleet
        .until("r", "a replacement serving", Duration::from_secs(30), |r| {
            r["ready"] == 2 && r["servers"].as_array().unwrap().iter().all(|s| s["id"] != victim.as_str())
        })
        .await;
    assert!(r["crash_loop"].is_null(), "one crash is no loop: {r}");
    let status = fleet.status().await;
    let crashed: Vec<&Value> = status["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "crashed").collect();
    assert_eq!(crashed.len(), 1, "{crashed:?}");
    assert_eq!(crashed[0]["server"], victim.as_str());
    assert!(crashed[0]["detail"].as_str().unwrap().contains("exited unasked"), "{}", crashed[0]);
    // The fleet told the allocator: the dead server's world is placed elsewhere at once, not
    // after the allocator's 15 s server timeout.
    assert!(
        status["events"].as_array().unwrap().iter().any(|e| e["kind"] == "farewell" && e["server"] == victim.as_str())
    );
    let moved_to = fleet.allocate("second", "crash-world").await;
    assert_ne!(moved_to, victim, "the world is no longer placed on the dead server");
    assert!(killed.elapsed() < Duration::from_secs(12), "{:?}", killed.elapsed());

    // What an operator reads: readiness, metrics, the description in force, `arena-fleet status`.
    let get = |path: &str| {
        let url = format!("{}{path}", fleet.api);
        let http = fleet.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/readyz").await.0, 200);
    let (_, metrics) = get("/metrics").await;
    for line in ["arena_fleet_crashes_total{region=\"r\"} 1", "arena_fleet_desired_servers{region=\"r\"} 2"] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let (_, described) = get("/v1/fleets/spec").await;
    let described: Value = serde_json::from_str(&described).unwrap();
    assert_eq!(described["regions"][0]["template"]["maxWorlds"], 2, "{described}");
    let out = std::process::Command::new(arena_testkit::process::workspace_bin("arena-fleet"))
        .args(["status", "--url", &fleet.api])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("crashed"), "{table}");

    // A region whose servers cannot start (a flag the gameserver refuses) is backed off, not
    // spun: with a 250 ms sync period, 8 s would allow 32 starts; the backoff allows about 5.
    let mut broken = spec("r", 2, 2, 0, "1", &[]);
    broken.push_str(spec("broken", 1, 1, 0, "1", &["--no-such-flag"]).split_once("regions:\n").unwrap().1);
    let (code, body) = fleet.put_spec(&broken, "wrong-key").await;
    assert_eq!((code, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let (code, body) = fleet.put_spec(&broken, DEV_KEY).await;
    assert_eq!(code, 200, "{body}");
    let r =
        fleet.until("broken", "a crash loop reported", Duration::from_secs(20), |r| !r["crash_loop"].is_null()).await;
    assert!(r["crash_loop"].as_str().unwrap().contains("crash"), "{r}");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let status = fleet.status().await;
    let starts =
        status["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "start" && e["region"] == "broken").count();
    assert!((3..=8).contains(&starts), "{starts} starts in about 9 s");
    // The healthy region did not notice.
    assert_eq!(fleet.region("r").await.unwrap()["ready"], 2);

    // An invalid description is refused with the reason, and nothing changes.
    let (code, body) = fleet.put_spec("regions: [{name: r, minServers: 3, maxServers: 1}]", DEV_KEY).await;
    assert_eq!(code, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("template") || message.contains("minServers"), "{body}");
    let (code, body) = fleet.put_spec(&spec("r", 2, 2, 0, "1", &[]), DEV_KEY).await;
    assert_eq!(code, 409, "a region cannot be removed: {body}");
    drop(fleet);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_moves_every_bot_with_its_seat() {
    let dir = dir("update");
    let redis = shared_redis();
    let prefix = redis_prefix("fleet");
    // Worlds are saved in Redis, so a draining server's worlds move with their bots.
    let store = ["--redis-url", redis.as_str(), "--redis-prefix", prefix.as_str()];
    let loadtest =
        "--bots 90 --ramp-per-sec 45 --duration-secs 40 --inputs-per-sec 1 --max-errors 0 --max-seats-lost 0";
    let fleet =
        Fleet::up(&spec("r", 2, 4, 0, "1", &store), &dir, &["--loadtest", loadtest, "--settle-secs", "60"]).await;
    fleet.until("r", "90 seats taken", Duration::from_secs(30), |r| r["seats_used"].as_u64() >= Some(90)).await;

    let (code, body) = fleet.put_spec(&spec("r", 2, 4, 0, "2", &store), DEV_KEY).await;
    assert_eq!(code, 200, "{body}");
    // Every server is replaced by one of version 2, one at a time (surge 1, none unavailable).
    let r = fleet
        .until("r", "every server on version 2", Duration::from_secs(60), |r| {
            let servers = r["servers"].as_array().unwrap();
            r["outdated"] == 0 && r["ready"].as_u64() >= Some(2) && servers.iter().all(|s| s["version"] == "2")
        })
        .await;
    eprintln!("every server on version 2: {r}");
    fleet.until("r", "every bot seated again", Duration::from_secs(30), |r| r["seats_used"].as_u64() >= Some(90)).await;
    let mut fleet = fleet;
    let code = fleet.exited(Duration::from_secs(150)).await;
    assert_eq!(code, 0, "the load test or the settling failed:\n{}", fleet.proc.log());

    let report: Value = serde_json::from_slice(&std::fs::read(dir.join("report/loadtest.json")).unwrap()).unwrap();
    assert_eq!(report["joined"], 90, "{report}");
    assert_eq!(report["errors"], 0, "{}", report["errors_by_kind"]);
    assert!(report["moved"].as_u64().unwrap() >= 1, "the drained servers' bots were moved: {report}");
    assert_eq!(report["seats_lost"], 0, "{report}");
    assert_eq!(report["seats_kept"], report["moved"], "each moved bot came back to its own seat: {report}");
    let timeline: Value =
        serde_json::from_slice(&std::fs::read(dir.join("report/fleet-timeline.json")).unwrap()).unwrap();
    let drained: Vec<Value> = events(&timeline, "drain");
    assert!(drained.len() >= 2, "both version-1 servers were drained: {drained:?}");
    assert!(events(&timeline, "crashed").is_empty(), "{:?}", events(&timeline, "crashed"));
    let max_servers = timeline["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ready"].as_u64().unwrap() + s["starting"].as_u64().unwrap())
        .max();
    assert!(max_servers <= Some(3), "never more than desired + surge: {max_servers:?}");
    clear_redis(&redis, &prefix).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_file_is_read_again_when_it_changes_and_the_cli_checks_one() {
    let dir = dir("file");
    let fleet = Fleet::up(&spec("r", 1, 3, 0, "1", &[]), &dir, &[]).await;
    let health = fleet.http.get(format!("{}/healthz", fleet.api)).send().await.unwrap();
    assert_eq!(health.status(), 200, "GET /healthz: 200 while the process runs");
    fleet.until("r", "one serving server", Duration::from_secs(30), |r| r["ready"] == 1).await;

    // `arena-fleet spec --check`: a valid file, and a bad one with the reason.
    let bin = env!("CARGO_BIN_EXE_arena-fleet");
    let file = dir.join("fleet.yaml");
    let ok = std::process::Command::new(bin).arg("spec").arg("--check").arg(&file).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).ends_with(": 1 regions, valid\n"));
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "regions: [{name: r, minServers: 3, maxServers: 1, template: {}, autoscale: {buffer: {unit: seats, size: 0}}}]",
    )
    .unwrap();
    let refused = std::process::Command::new(bin).arg("spec").arg("--check").arg(&bad).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("minServers"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // The running fleet re-reads its file: an invalid change is ignored, a valid one applied.
    std::fs::write(&file, "regions: [{name: r, minServers: 3, maxServers: 1}]").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = fleet.region("r").await.unwrap();
    assert_eq!((r["min"].as_u64(), r["max"].as_u64()), (Some(1), Some(3)), "an invalid file changes nothing");
    std::fs::write(&file, spec("r", 2, 3, 0, "1", &[])).unwrap();
    fleet.until("r", "two serving servers after the file changed", Duration::from_secs(30), |r| r["ready"] == 2).await;
    let _ = std::fs::remove_dir_all(&dir);
}
