//! Allocation throughput and latency: N concurrent clients POSTing allocations to one or more
//! allocator replicas as fast as they answer.
//!
//! It registers synthetic gameservers (heartbeats every second, room for plenty of worlds) so
//! capacity never runs out during the run, then reports allocations per second and latency
//! percentiles (client side, HDR histogram).
//!
//! ```sh
//! cargo run --release -p arena-allocator --example alloc_bench -- \
//!     --allocator http://127.0.0.1:7100 --allocator http://127.0.0.1:7101 --concurrency 64 --seconds 10
//! ```
//!
//! `--rate R` offers R allocations per second (open loop, latency from the scheduled send time)
//! instead of sending as fast as answers come.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arena_sdk::allocator_api::{Endpoints, Heartbeat, ServerState};
use hdrhistogram::Histogram;
use parking_lot::Mutex;

struct Args {
    allocators: Vec<String>,
    concurrency: usize,
    seconds: f64,
    servers: usize,
    key: String,
    /// Offered load (allocations per second over all clients); 0: as fast as answers come.
    rate: f64,
}

fn args() -> Args {
    let mut a = Args {
        allocators: vec![],
        concurrency: 64,
        seconds: 10.0,
        servers: 20,
        key: "arena-dev-key".into(),
        rate: 0.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--allocator" => a.allocators.push(val()),
            "--concurrency" => a.concurrency = val().parse().expect("--concurrency"),
            "--seconds" => a.seconds = val().parse().expect("--seconds"),
            "--servers" => a.servers = val().parse().expect("--servers"),
            "--key" => a.key = val(),
            "--rate" => a.rate = val().parse().expect("--rate"),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.allocators.is_empty(), "give at least one --allocator URL");
    a
}

#[tokio::main]
async fn main() {
    let args = args();
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));

    // Synthetic capacity: heartbeats every second to the first allocator.
    let beats = {
        let (client, stop, base, key, n) =
            (client.clone(), Arc::clone(&stop), args.allocators[0].clone(), args.key.clone(), args.servers);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for i in 0..n {
                    let hb = Heartbeat {
                        server_id: format!("bench-gs-{i}"),
                        region: "bench".into(),
                        endpoints: Endpoints::websocket(format!("ws://127.0.0.1:{}/ws", 20_000 + i)),
                        state: ServerState::Ready,
                        max_worlds: 1_000,
                        world_capacity: 30,
                        worlds: vec![],
                        load: None,
                        version: None,
                    };
                    let r =
                        client.post(format!("{base}/v1/servers/heartbeat")).bearer_auth(&key).json(&hb).send().await;
                    if let Err(e) = r.and_then(|r| r.error_for_status()) {
                        eprintln!("heartbeat failed: {e}");
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    // Let every replica's index see the servers.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()));
    let (ok, refused, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let (client, hist, ok, refused, failed) =
            (client.clone(), Arc::clone(&hist), Arc::clone(&ok), Arc::clone(&refused), Arc::clone(&failed));
        let base = args.allocators[w % args.allocators.len()].clone();
        let key = args.key.clone();
        let (rate, concurrency) = (args.rate, args.concurrency);
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let url = format!("{base}/v1/allocations");
            let mut n = 0u64;
            // Open loop: each client sends on its own schedule and latency counts from the
            // scheduled time, so a slow answer cannot hide the requests that queue behind it.
            let interval = (rate > 0.0).then(|| Duration::from_secs_f64(concurrency as f64 / rate));
            let mut next =
                Instant::now() + interval.map_or(Duration::ZERO, |i| i.mul_f64(w as f64 / concurrency as f64));
            while Instant::now() < deadline {
                n += 1;
                let body = format!(r#"{{"bot_id":"bench-{w}-{n}","regions":["bench"]}}"#);
                let t0 = match interval {
                    Some(i) => {
                        tokio::time::sleep_until(next.into()).await;
                        let scheduled = next;
                        next += i;
                        scheduled
                    }
                    None => Instant::now(),
                };
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(resp) => {
                        let status = resp.status();
                        let _ = resp.bytes().await;
                        let _ = local.record(t0.elapsed().as_micros() as u64);
                        match status.as_u16() {
                            200 => ok.fetch_add(1, Ordering::Relaxed),
                            429 => refused.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist.lock().add(&local).unwrap();
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let took = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = beats.await;
    let h = hist.lock();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "allocators {}  concurrency {}  offered {}  {:.1} s: {} ok ({:.0}/s), {} refused (429), {} failed | latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        args.allocators.len(),
        args.concurrency,
        if args.rate > 0.0 { format!("{}/s", args.rate) } else { "max".to_owned() },
        took,
        ok,
        ok as f64 / took,
        refused.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
}
