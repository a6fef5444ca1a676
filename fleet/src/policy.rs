//! Autoscaling policies: how many servers a region wants, from its load and the time. Pure: the
//! load, the clock and the state a policy keeps between calls (cooldowns, quiet windows) are
//! passed in. Every decision says why, in words an operator can check against the numbers.

use std::collections::{BTreeMap, VecDeque};

use crate::load::RegionLoad;
use crate::spec::{Amount, BufferPolicy, Policy, SchedulePolicy, ThresholdPolicy, Unit, Window, parse_hhmm};

/// What a policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Servers wanted, within the bounds in force.
    pub desired: u32,
    /// Which policy decided (`buffer`, `threshold`, `schedule/buffer`, `chain[1]/threshold`, …).
    pub policy: String,
    /// Why, with the numbers.
    pub reason: String,
}

/// What policies remember between calls, by their place in the description.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyState {
    threshold: BTreeMap<String, ThresholdState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ThresholdState {
    /// When this policy last changed the count (ms).
    last_change_ms: Option<u64>,
    /// Since when the region has been below its idle line (ms).
    idle_since_ms: Option<u64>,
}

/// What a region's policy wanted lately, to scale down only to the highest of it: up at once,
/// down once a lower count has been all the policy wanted for the whole window (the
/// stabilisation window of Kubernetes' HPA, for the same reason: a load that dips for a moment
/// must not drain servers it needs again a moment later).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stabilizer {
    /// (when, what the policy wanted), oldest first.
    wanted: VecDeque<(u64, u32)>,
}

/// Most recommendations a stabiliser keeps (one per sync: hours at a 1 s sync period).
const MAX_WANTED: usize = 100_000;

impl Stabilizer {
    /// The count to act on, given what the policy wants at `now_ms` and the window; the second
    /// value says why when it is not what the policy wanted.
    pub fn apply(&mut self, now_ms: u64, wanted: u32, window_ms: u64) -> (u32, Option<String>) {
        while self.wanted.front().is_some_and(|(t, _)| t + window_ms < now_ms) || self.wanted.len() >= MAX_WANTED {
            self.wanted.pop_front();
        }
        // A higher recommendation makes every lower one before it irrelevant.
        while self.wanted.back().is_some_and(|(_, n)| *n <= wanted) {
            self.wanted.pop_back();
        }
        self.wanted.push_back((now_ms, wanted));
        let (since, highest) = self.wanted.front().copied().unwrap_or((now_ms, wanted));
        if highest > wanted {
            let left = (since + window_ms).saturating_sub(now_ms).div_ceil(1000);
            let window = window_ms / 1000;
            (highest, Some(format!("{highest} wanted within the last {window} s: holding {highest} for {left} s more")))
        } else {
            (wanted, None)
        }
    }
}

/// The bounds a decision must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
}

/// Decide for one region: `load` now, `now_ms` since the Unix epoch (UTC), within `bounds`
/// (a schedule's window may change them).
pub fn decide(policy: &Policy, load: &RegionLoad, now_ms: u64, bounds: Bounds, state: &mut PolicyState) -> Decision {
    evaluate(policy, load, now_ms, bounds, state, "")
}

fn name(path: &str, this: &str) -> String {
    if path.is_empty() { this.to_owned() } else { format!("{path}/{this}") }
}

fn evaluate(p: &Policy, load: &RegionLoad, now_ms: u64, b: Bounds, state: &mut PolicyState, path: &str) -> Decision {
    match p {
        Policy::Buffer(buf) => buffer(buf, load, b, name(path, "buffer")),
        Policy::Threshold(t) => threshold(t, load, now_ms, b, state, name(path, "threshold")),
        Policy::Schedule(s) => schedule(s, load, now_ms, b, state, &name(path, "schedule")),
        Policy::Chain(list) => {
            let here = name(path, "chain");
            for (i, p) in list.iter().enumerate() {
                if applies(p, now_ms) {
                    return evaluate(p, load, now_ms, b, state, &format!("{here}[{i}]"));
                }
            }
            let keep = clamp(load.servers, b);
            Decision {
                desired: keep.0,
                policy: here,
                reason: format!("no policy of the chain applies now: {}", keep.1),
            }
        }
    }
}

/// Whether a policy applies now: a schedule inside one of its windows, every other one always.
pub fn applies(p: &Policy, now_ms: u64) -> bool {
    match p {
        Policy::Schedule(s) => active_window(&s.windows, now_ms).is_some(),
        _ => true,
    }
}

/// `n` within `b`, and a note when it had to be moved.
fn clamp(n: u32, b: Bounds) -> (u32, String) {
    if n < b.min {
        (b.min, format!("{n} → min {}", b.min))
    } else if n > b.max {
        (b.max, format!("{n} → max {}", b.max))
    } else {
        (n, format!("{n} servers"))
    }
}

/// Keep `size` of the unit free: servers = what is used plus the buffer, over one server's
/// capacity (a percentage keeps that share of the total free).
fn buffer(p: &BufferPolicy, load: &RegionLoad, b: Bounds, policy: String) -> Decision {
    let (used, per_server, unit) = match p.unit {
        Unit::Seats => (load.seats_used, load.seats_per_server.max(1), "seats"),
        Unit::Worlds => (load.worlds_used, load.worlds_per_server.max(1), "worlds"),
        Unit::Servers => (u64::from(load.busy_servers), 1, "busy servers"),
    };
    let needed = match p.size {
        Amount::Count(n) => used + u64::from(n),
        Amount::Percent(pct) => (used as f64 / (1.0 - pct / 100.0)).ceil() as u64,
    };
    let servers = u32::try_from(needed.div_ceil(per_server)).unwrap_or(u32::MAX);
    let (desired, bounded) = clamp(servers, b);
    let reason = if p.unit == Unit::Servers {
        format!("{used} {unit} + buffer {} = {needed}: {bounded}", p.size)
    } else {
        format!("{used} {unit} used + buffer {} = {needed} over {per_server} per server: {bounded}", p.size)
    };
    Decision { desired, policy, reason }
}

fn threshold(
    p: &ThresholdPolicy,
    load: &RegionLoad,
    now_ms: u64,
    b: Bounds,
    state: &mut PolicyState,
    policy: String,
) -> Decision {
    let st = state.threshold.entry(policy.clone()).or_default();
    let current = load.servers;
    let cooling = st.last_change_ms.is_some_and(|t| now_ms < t + p.cooldown_secs * 1000);
    let busy = load.utilisation.iter().filter(|u| **u >= p.busy_at).count();
    let share = if load.utilisation.is_empty() { 0.0 } else { busy as f64 / load.utilisation.len() as f64 };
    let util = load.region_utilisation();
    if util < p.idle_below {
        st.idle_since_ms.get_or_insert(now_ms);
    } else {
        st.idle_since_ms = None;
    }
    let idle_for_ms = st.idle_since_ms.map_or(0, |t| now_ms.saturating_sub(t));
    let pct = |x: f64| format!("{:.0}%", x * 100.0);
    let (want, why) = if share >= p.busy_share && !load.utilisation.is_empty() {
        let up = current.saturating_add(p.step);
        (
            up,
            format!(
                "{busy} of {} servers at ≥ {} ({} ≥ {}): +{}",
                load.utilisation.len(),
                pct(p.busy_at),
                pct(share),
                pct(p.busy_share),
                p.step
            ),
        )
    } else if idle_for_ms >= p.idle_window_secs * 1000 && util < p.idle_below {
        let down = current.saturating_sub(p.step);
        (down, format!("utilisation {} < {} for {} s: −{}", pct(util), pct(p.idle_below), idle_for_ms / 1000, p.step))
    } else {
        (current, format!("utilisation {}, {busy} busy servers: hold", pct(util)))
    };
    let (bounded, note) = clamp(want, b);
    if bounded != current && cooling {
        let (keep, _) = clamp(current, b);
        let left = st.last_change_ms.map_or(0, |t| (t + p.cooldown_secs * 1000).saturating_sub(now_ms) / 1000);
        return Decision { desired: keep, policy, reason: format!("{why}, but cooling down ({left} s left)") };
    }
    if bounded != current {
        st.last_change_ms = Some(now_ms);
        if bounded < current {
            // A fresh quiet window before the next step down.
            st.idle_since_ms = Some(now_ms);
        }
    }
    Decision { desired: bounded, policy, reason: format!("{why}: {note}") }
}

fn schedule(
    p: &SchedulePolicy,
    load: &RegionLoad,
    now_ms: u64,
    b: Bounds,
    state: &mut PolicyState,
    path: &str,
) -> Decision {
    match active_window(&p.windows, now_ms) {
        Some(w) => {
            let inner = Bounds { min: w.min_servers.unwrap_or(b.min), max: w.max_servers.unwrap_or(b.max).max(b.min) };
            let inner = Bounds { min: inner.min.min(inner.max), max: inner.max };
            let d = evaluate(&p.policy, load, now_ms, inner, state, path);
            let days = if w.days.is_empty() { "daily".to_owned() } else { format!("{:?}", w.days).to_lowercase() };
            Decision {
                reason: format!(
                    "window {}–{} UTC {days} (servers {}–{}): {}",
                    w.from, w.to, inner.min, inner.max, d.reason
                ),
                ..d
            }
        }
        None => evaluate(&p.policy, load, now_ms, b, state, path),
    }
}

/// The first window that contains `now_ms`.
pub fn active_window(windows: &[Window], now_ms: u64) -> Option<&Window> {
    let secs = now_ms / 1000;
    let day = secs / 86_400;
    // 1970-01-01 was a Thursday: Monday = 0 makes it day 3.
    let weekday = (day + 3) % 7;
    let minute = ((secs % 86_400) / 60) as u32;
    windows.iter().find(|w| {
        let (Some(from), Some(to)) = (parse_hhmm(&w.from), parse_hhmm(&w.to)) else { return false };
        let on = |d: u64| w.days.is_empty() || w.days.iter().any(|x| x.index() == d);
        if from <= to {
            on(weekday) && minute >= from && minute < to
        } else {
            // Wraps midnight: the evening belongs to today, the morning to yesterday's window.
            (on(weekday) && minute >= from) || (on((weekday + 6) % 7) && minute < to)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Weekday;

    const B: Bounds = Bounds { min: 1, max: 10 };
    /// 2026-12-02 (a Wednesday) 00:00 UTC, in ms.
    const WED: u64 = 1_796_169_600_000;
    const MIN: u64 = 60_000;

    fn load(servers: u32, used: u64, util: &[f64]) -> RegionLoad {
        RegionLoad {
            servers,
            seats_per_server: 1500,
            worlds_per_server: 50,
            seats_used: used,
            worlds_used: used.div_ceil(30),
            busy_servers: util.iter().filter(|u| **u > 0.0).count() as u32,
            utilisation: util.to_vec(),
        }
    }

    fn buf(unit: Unit, size: Amount) -> Policy {
        Policy::Buffer(BufferPolicy { unit, size })
    }

    fn desired(p: &Policy, l: &RegionLoad, now: u64, st: &mut PolicyState) -> u32 {
        decide(p, l, now, B, st).desired
    }

    #[test]
    fn a_lower_count_waits_for_the_whole_window_and_a_higher_one_is_at_once() {
        let mut s = Stabilizer::default();
        let w = 30_000;
        assert_eq!(s.apply(WED, 2, w), (2, None));
        assert_eq!(s.apply(WED + 1000, 5, w), (5, None), "up at once");
        let (n, why) = s.apply(WED + 2000, 3, w);
        assert_eq!(n, 5, "down waits");
        assert_eq!(why.unwrap(), "5 wanted within the last 30 s: holding 5 for 29 s more");
        assert_eq!(s.apply(WED + 20_000, 4, w).0, 5);
        // 5 was last wanted at WED + 1 s: at WED + 31 s it is out of the window, 4 (WED + 20 s) is not.
        assert_eq!(s.apply(WED + 31_000, 2, w).0, 5);
        assert_eq!(s.apply(WED + 31_001, 2, w).0, 4);
        assert_eq!(s.apply(WED + 50_001, 2, w).0, 2);
        // A flapping recommendation holds the highest.
        for i in 0..20 {
            assert_eq!(s.apply(WED + 60_000 + i * 1000, if i % 2 == 0 { 8 } else { 3 }, w).0, 8);
        }
        // No window: the policy's count as it is.
        assert_eq!(Stabilizer::default().apply(WED, 3, 0), (3, None));
        let mut s = Stabilizer::default();
        s.apply(WED, 9, 0);
        assert_eq!(s.apply(WED + 1, 1, 0), (1, None));
    }

    #[test]
    fn buffer_keeps_free_capacity_in_each_unit() {
        let st = &mut PolicyState::default();
        let seats = buf(Unit::Seats, Amount::Count(1500));
        // (used seats, servers wanted): used + 1,500 over 1,500 per server, at least min 1.
        for (used, want) in [(0, 1), (1, 2), (1500, 2), (1501, 3), (7000, 6), (20_000, 10)] {
            assert_eq!(desired(&seats, &load(2, used, &[]), WED, st), want, "{used} seats used");
        }
        let pct = buf(Unit::Seats, Amount::Percent(20.0));
        assert_eq!(desired(&pct, &load(2, 2400, &[]), WED, st), 2, "2,400 / 0.8 = 3,000 = 2 servers");
        assert_eq!(desired(&pct, &load(2, 2401, &[]), WED, st), 3);
        let worlds = buf(Unit::Worlds, Amount::Count(10));
        assert_eq!(desired(&worlds, &load(2, 41 * 30, &[]), WED, st), 2, "41 + 10 worlds over 50");
        let servers = buf(Unit::Servers, Amount::Count(2));
        assert_eq!(desired(&servers, &load(4, 10, &[0.1, 0.2, 0.0]), WED, st), 4, "2 busy + 2 spare");
        let d = decide(&seats, &load(2, 7000, &[]), WED, B, st);
        assert_eq!(d.policy, "buffer");
        assert_eq!(d.reason, "7000 seats used + buffer 1500 = 8500 over 1500 per server: 6 servers");
    }

    #[test]
    fn buffer_sizes_by_measured_capacity() {
        // Servers that saturate at 900 bots need more of them than their 1,500 seats suggest.
        let l = RegionLoad { seats_per_server: 900, ..load(3, 2700, &[1.0, 1.0, 1.0]) };
        let d = decide(&buf(Unit::Seats, Amount::Count(900)), &l, WED, B, &mut PolicyState::default());
        assert_eq!(d.desired, 4);
        assert!(d.reason.contains("over 900 per server"), "{}", d.reason);
    }

    /// The plan's policy: up when 70 % of servers are at 80 %, down after 10 min under 30 %,
    /// 5 min cooldown.
    fn the_plans_threshold() -> Policy {
        Policy::Threshold(ThresholdPolicy {
            busy_at: 0.8,
            busy_share: 0.7,
            idle_below: 0.3,
            idle_window_secs: 600,
            cooldown_secs: 300,
            step: 1,
        })
    }

    #[test]
    fn threshold_scales_up_when_most_are_busy_then_cools_down() {
        let p = the_plans_threshold();
        let st = &mut PolicyState::default();
        // 2 of 3 busy = 67 % < 70 %: hold.
        assert_eq!(desired(&p, &load(3, 3000, &[0.9, 0.85, 0.2]), WED, st), 3);
        // 3 of 3: up one.
        let d = decide(&p, &load(3, 4000, &[0.9, 0.85, 0.8]), WED, B, st);
        assert_eq!(d.desired, 4, "{d:?}");
        assert!(d.reason.starts_with("3 of 3 servers at ≥ 80%"), "{}", d.reason);
        // Still busy a minute later, now 4 servers: cooling down.
        let d = decide(&p, &load(4, 5000, &[0.9, 0.9, 0.9, 0.9]), WED + MIN, B, st);
        assert_eq!(d.desired, 4);
        assert!(d.reason.contains("cooling down (240 s left)"), "{}", d.reason);
        // After the cooldown: up again.
        assert_eq!(desired(&p, &load(4, 5000, &[0.9, 0.9, 0.9, 0.9]), WED + 5 * MIN, st), 5);
    }

    #[test]
    fn threshold_scales_down_only_after_a_whole_quiet_window() {
        let p = the_plans_threshold();
        let st = &mut PolicyState::default();
        let quiet = load(4, 600, &[0.1, 0.1, 0.1, 0.1]);
        assert_eq!(desired(&p, &quiet, WED, st), 4);
        assert_eq!(desired(&p, &quiet, WED + 9 * MIN, st), 4);
        // A busy moment resets the window.
        assert_eq!(desired(&p, &load(4, 2400, &[0.4, 0.4, 0.4, 0.4]), WED + 9 * MIN + 1, st), 4);
        assert_eq!(desired(&p, &quiet, WED + 10 * MIN, st), 4);
        assert_eq!(desired(&p, &quiet, WED + 19 * MIN, st), 4);
        let d = decide(&p, &quiet, WED + 20 * MIN, B, st);
        assert_eq!(d.desired, 3, "{d:?}");
        // The next step down needs another whole window (and the cooldown).
        assert_eq!(desired(&p, &load(3, 600, &[0.1, 0.1, 0.1]), WED + 26 * MIN, st), 3);
        assert_eq!(desired(&p, &load(3, 600, &[0.1, 0.1, 0.1]), WED + 30 * MIN, st), 2);
        // Never below min.
        let one = load(1, 0, &[0.0]);
        assert_eq!(desired(&p, &one, WED + 60 * MIN, st), 1);
        assert_eq!(desired(&p, &one, WED + 90 * MIN, st), 1);
    }

    #[test]
    fn schedules_change_the_bounds_inside_their_windows() {
        let p = Policy::Schedule(SchedulePolicy {
            windows: vec![Window {
                days: vec![Weekday::Wed],
                from: "18:00".into(),
                to: "02:00".into(),
                min_servers: Some(5),
                max_servers: None,
            }],
            policy: Box::new(buf(Unit::Seats, Amount::Count(1500))),
        });
        let st = &mut PolicyState::default();
        let idle = load(1, 0, &[0.0]);
        assert_eq!(desired(&p, &idle, WED + 17 * 60 * MIN, st), 1, "Wednesday 17:00: outside");
        let d = decide(&p, &idle, WED + 18 * 60 * MIN, B, st);
        assert_eq!(d.desired, 5, "Wednesday 18:00: the window's min");
        assert_eq!(d.policy, "schedule/buffer");
        assert!(d.reason.starts_with("window 18:00–02:00 UTC [wed] (servers 5–10)"), "{}", d.reason);
        assert_eq!(desired(&p, &idle, WED + 25 * 60 * MIN, st), 5, "Thursday 01:00: still Wednesday's window");
        assert_eq!(desired(&p, &idle, WED + 26 * 60 * MIN, st), 1, "Thursday 02:00: over");
        assert_eq!(desired(&p, &idle, WED + (7 * 24 + 19) * 60 * MIN, st), 5, "next Wednesday");
        assert_eq!(desired(&p, &idle, WED + (24 + 19) * 60 * MIN, st), 1, "Thursday evening");
    }

    #[test]
    fn a_chain_takes_the_first_policy_that_applies() {
        let weekend = Policy::Schedule(SchedulePolicy {
            windows: vec![Window {
                days: vec![Weekday::Sat, Weekday::Sun],
                from: "00:00".into(),
                to: "23:59".into(),
                min_servers: None,
                max_servers: Some(3),
            }],
            policy: Box::new(buf(Unit::Seats, Amount::Percent(50.0))),
        });
        let p = Policy::Chain(vec![weekend, buf(Unit::Seats, Amount::Count(3000))]);
        let st = &mut PolicyState::default();
        let l = load(2, 3000, &[1.0, 1.0]);
        let d = decide(&p, &l, WED, B, st);
        assert_eq!((d.desired, d.policy.as_str()), (4, "chain[1]/buffer"));
        let sat = WED + 3 * 24 * 60 * MIN + 12 * 60 * MIN;
        let d = decide(&p, &l, sat, B, st);
        assert_eq!((d.desired, d.policy.as_str()), (3, "chain[0]/schedule/buffer"), "{d:?}");
        let only_weekend = Policy::Chain(vec![p.clone()]);
        let _ = only_weekend;
        let never = Policy::Chain(vec![Policy::Schedule(SchedulePolicy {
            windows: vec![Window {
                days: vec![Weekday::Sun],
                from: "01:00".into(),
                to: "02:00".into(),
                min_servers: None,
                max_servers: None,
            }],
            policy: Box::new(buf(Unit::Seats, Amount::Count(0))),
        })]);
        let d = decide(&never, &load(3, 0, &[]), WED, B, st);
        assert_eq!(d.desired, 3, "nothing applies: keep what there is");
    }
}
