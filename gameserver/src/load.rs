//! How busy the server is, measured: the tick budget.
//!
//! Every shard tick is recorded with its *lateness* (how long after its scheduled time it
//! started) and its *work* (how long it ran). When the machine runs out of CPU — the server's
//! own, or its neighbours' — ticks start late, and every input's acknowledgement waits that much
//! longer. Lateness is the proof, but it comes late: by the time ticks slip, the bots that
//! pushed the machine over are seated. So CPU is watched too, the server's and the machine's.
//! The load is the largest of
//!
//! - the 95th percentile of lateness over the window, as a share of the lateness budget,
//! - the process's CPU use, as a share of its CPU target (`cpu_target` cores), and
//! - the machine's busy share (all its cores, whoever uses them), as a share of
//!   `machine_target` (off when 0),
//!
//! so `1.0` means "at budget": past it the server takes no new bots (see `admission.rs`) and
//! tells the allocator it has no room. Its *room* — how many more bots it can take — scales the
//! bots it holds by the CPU still free (its own and the machine's, whichever is less), and is 0
//! at or past budget. Scaling the machine's CPU by our bots assumes the neighbours grow with
//! them (true of a load tester on the same box; conservative otherwise). Pure: time and CPU
//! readings are passed in.

use std::collections::VecDeque;
use std::time::Duration;

/// What the budget is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadConfig {
    /// Shard ticks may start this late (95th percentile) at full load.
    pub lateness_budget: Duration,
    /// Cores of CPU the process may use at full load.
    pub cpu_target: f32,
    /// Share (0–1) of the machine's CPU that may be busy at full load; 0 ignores the machine.
    pub machine_target: f32,
    /// How far back ticks count.
    pub window: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            lateness_budget: Duration::from_millis(10),
            cpu_target: 1.6,
            machine_target: 0.0,
            window: Duration::from_secs(2),
        }
    }
}

/// One reading of the load.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Load {
    /// 1.0 is the budget.
    pub tick: f32,
    pub lateness_p95: Duration,
    pub work_p95: Duration,
    /// Cores the process used.
    pub cpu: f32,
    /// Share (0–1) of the machine's CPU that was busy.
    pub machine: f32,
    /// Bots connected while the CPU was measured.
    pub bots: u32,
}

#[derive(Debug, Clone)]
pub struct LoadMeter {
    cfg: LoadConfig,
    /// (when, lateness, work) of recent shard ticks.
    ticks: VecDeque<(Duration, Duration, Duration)>,
}

impl LoadMeter {
    pub fn new(cfg: LoadConfig) -> Self {
        LoadMeter { cfg, ticks: VecDeque::new() }
    }

    pub fn config(&self) -> &LoadConfig {
        &self.cfg
    }

    /// A shard tick scheduled for `scheduled` started at `started` and ran for `work`.
    pub fn record(&mut self, scheduled: Duration, started: Duration, work: Duration) {
        self.ticks.push_back((started, started.saturating_sub(scheduled), work));
        // Bounded whatever the caller does: a few thousand ticks cover any window.
        while self.ticks.len() > 16_384 {
            self.ticks.pop_front();
        }
    }

    /// The load at `now`, given the cores the process used lately, the machine's busy share and
    /// the bots connected meanwhile.
    pub fn load(&mut self, now: Duration, cpu: f32, machine: f32, bots: u32) -> Load {
        let horizon = now.saturating_sub(self.cfg.window);
        while self.ticks.front().is_some_and(|(at, _, _)| *at < horizon) {
            self.ticks.pop_front();
        }
        let lateness_p95 = p95(self.ticks.iter().map(|t| t.1));
        let work_p95 = p95(self.ticks.iter().map(|t| t.2));
        let late = lateness_p95.as_secs_f32() / self.cfg.lateness_budget.as_secs_f32().max(1e-6);
        let cpu_share = cpu / self.cfg.cpu_target.max(1e-3);
        let machine_share = if self.cfg.machine_target > 0.0 { machine / self.cfg.machine_target } else { 0.0 };
        Load { tick: late.max(cpu_share).max(machine_share), lateness_p95, work_p95, cpu, machine, bots }
    }
}

fn p95(values: impl Iterator<Item = Duration>) -> Duration {
    let mut v: Vec<Duration> = values.collect();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    v[(v.len() * 95).div_ceil(100).saturating_sub(1)]
}

/// Bots the server can still take, now that it holds `bots`: 0 at or past budget, and 0 while
/// admission still `refusing` new bots (its hysteresis keeps refusing until the load is well
/// below budget: the allocator must not place bots the server would turn away); else the
/// bots it served while the CPU was measured, scaled by the CPU still free (its own or the
/// machine's, whichever is less), minus those it holds now — bots that joined since the
/// reading are not free (unbounded — `u32::MAX` — while it served too few to tell).
pub fn room(load: &Load, cfg: &LoadConfig, bots: u32, refusing: bool) -> u32 {
    if refusing || load.tick >= 1.0 {
        return 0;
    }
    if load.bots < 100 || load.cpu < 0.02 {
        return u32::MAX;
    }
    let mut fits = f64::from(cfg.cpu_target) / f64::from(load.cpu);
    if cfg.machine_target > 0.0 && load.machine > 0.01 {
        fits = fits.min(f64::from(cfg.machine_target) / f64::from(load.machine));
    }
    (f64::from(load.bots) * fits - f64::from(bots)).round().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// The machine's CPU counters, from the first line of `/proc/stat`: (busy, total) in ticks.
/// Idle and I/O wait count as not busy.
pub fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>().ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice — already in user/nice]
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The busy share between two `parse_proc_stat` readings.
pub fn busy_share(before: (u64, u64), after: (u64, u64)) -> f32 {
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1) as f64;
    if total <= 0.0 { 0.0 } else { (busy / total).clamp(0.0, 1.0) as f32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn late_ticks_and_busy_cpu_both_count() {
        let cfg = LoadConfig {
            lateness_budget: 10 * MS,
            cpu_target: 1.0,
            machine_target: 0.0,
            window: Duration::from_secs(1),
        };
        let mut m = LoadMeter::new(cfg);
        for i in 0..100u32 {
            let at = i * 10 * MS;
            // 94 on time, 6 of them 20 ms late: the 95th percentile is late.
            let late = if i % 16 == 0 { 20 * MS } else { Duration::ZERO };
            m.record(at, at + late, MS);
        }
        let l = m.load(Duration::from_secs(1), 0.2, 0.99, 5_000);
        assert_eq!(l.lateness_p95, 20 * MS);
        assert!((l.tick - 2.0).abs() < 1e-6, "{l:?}");
        assert_eq!(room(&l, &cfg, 5_000, false), 0, "past budget: no room");
        // Later, the late ticks left the window; CPU decides.
        for i in 100..200u32 {
            m.record(i * 10 * MS, i * 10 * MS, MS);
        }
        let l = m.load(Duration::from_secs(2), 0.5, 0.99, 5_000);
        assert_eq!(l.lateness_p95, Duration::ZERO);
        assert!((l.tick - 0.5).abs() < 1e-6);
        assert_eq!(room(&l, &cfg, 5_000, false), 5_000, "half the CPU target used: room for as many again");
        assert_eq!(room(&l, &cfg, 8_000, false), 2_000, "bots that joined since the reading are not free");
        assert_eq!(room(&l, &cfg, 12_000, false), 0);
        assert_eq!(room(&l, &cfg, 5_000, true), 0, "below budget, but admission still refuses: no room");
        let few = m.load(Duration::from_secs(2), 0.5, 0.99, 10);
        assert_eq!(room(&few, &cfg, 10, false), u32::MAX, "too few bots to tell");
    }

    #[test]
    fn a_busy_machine_counts_when_asked() {
        let cfg = LoadConfig {
            lateness_budget: 10 * MS,
            cpu_target: 2.0,
            machine_target: 0.8,
            window: Duration::from_secs(1),
        };
        let mut m = LoadMeter::new(cfg);
        m.record(Duration::ZERO, Duration::ZERO, MS);
        // The server uses half a core of its two, but neighbours keep the machine 60 % busy.
        let l = m.load(MS, 0.5, 0.6, 3_000);
        assert!((l.tick - 0.75).abs() < 1e-6, "{l:?}");
        // Own CPU would fit 3× more bots; the machine only a third more.
        assert_eq!(room(&l, &cfg, 3_000, false), 1_000);
        let l = m.load(MS, 0.5, 0.8, 3_000);
        assert_eq!(room(&l, &cfg, 3_000, false), 0, "machine at its target: no room");
        let off = LoadConfig { machine_target: 0.0, ..cfg };
        let l = LoadMeter::new(off).load(MS, 0.5, 1.0, 3_000);
        assert!((l.tick - 0.25).abs() < 1e-6, "{l:?}");
        assert_eq!(room(&l, &off, 3_000, false), 9_000);
    }

    #[test]
    fn proc_stat_is_read() {
        let before = parse_proc_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        assert_eq!(before, (150, 1000));
        let after = parse_proc_stat("cpu  250 0 100 850 50 0 0 0 0 0\n").unwrap();
        assert!((busy_share(before, after) - 0.8).abs() < 1e-6);
        assert_eq!(parse_proc_stat("intr 1 2"), None);
        assert_eq!(parse_proc_stat("cpu  1 x 3"), None);
        assert_eq!(busy_share(after, before), 0.0);
    }
}
