//! The reconciler: what a region wants (a count of servers of one template version) and what it
//! has (its servers, each with its process's phase and the allocator's view of it) → actions:
//! start, drain, kill. Pure: time and observations are passed in; the controller carries out
//! the actions through a backend (local processes, or Kubernetes pods later).
//!
//! Rules, in the order they apply:
//!
//! - A server that has been starting longer than the start limit, or draining longer than the
//!   drain limit, is killed.
//! - **Rolling update** (some active server runs another version): start new-version servers
//!   while the total stays within desired + max surge; drain old ones while the ready servers
//!   stay at least desired − max unavailable (old servers that are not ready go first, then the
//!   emptiest). Their worlds move with their bots: a drain saves them and the allocator places
//!   them elsewhere.
//! - **Scale up**: start the missing servers, unless crashes keep happening — then the next start
//!   waits (1 s, 2 s, 4 s, … up to 5 min) and the region reports a crash loop.
//! - **Scale down** removes only servers where no seat is taken or reserved (a bot within its
//!   resume grace still holds its seat): starting ones first, then those without a loaded world,
//!   then the longest idle. Their idle worlds are saved by the drain (when the server persists
//!   them) and placed again when a bot asks for one. A server with bots is never drained to
//!   scale down; only a rolling update drains it.
//! - Never more than max (+ surge during an update), never fewer than min.

use std::collections::VecDeque;

use crate::spec::RollingUpdate;

/// Where a managed server's process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started, not yet serving.
    Starting,
    /// Serving.
    Running,
    /// Told to drain; will exit.
    Draining,
}

/// One server of the region, as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    pub id: String,
    pub version: String,
    pub phase: Phase,
    /// Since when it has been in this phase (ms).
    pub since_ms: u64,
    /// The allocator places bots on it (alive, ready).
    pub ready: bool,
    /// Seats occupied or reserved, and live worlds, as the allocator last saw them.
    pub seats_used: u32,
    pub worlds: u32,
}

impl Managed {
    fn active(&self) -> bool {
        self.phase != Phase::Draining
    }
    fn empty(&self) -> bool {
        self.seats_used == 0
    }
}

/// What the region should have.
#[derive(Debug, Clone, PartialEq)]
pub struct Want<'a> {
    pub desired: u32,
    pub min: u32,
    pub max: u32,
    pub version: &'a str,
    pub rolling: RollingUpdate,
    pub now_ms: u64,
    /// A start that takes longer than this is given up (killed).
    pub start_limit_ms: u64,
    /// A drain that takes longer than this is cut short (killed).
    pub drain_limit_ms: u64,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start { why: String },
    Drain { id: String, why: String },
    Kill { id: String, why: String },
}

/// Crashes of a region's servers, and when the next start may happen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashBackoff {
    crashes: VecDeque<u64>,
    next_start_ms: u64,
}

/// Crashes older than this are forgotten.
pub const CRASH_WINDOW_MS: u64 = 600_000;
/// The longest wait before a start after crashes.
pub const MAX_BACKOFF_MS: u64 = 300_000;
/// Crashes in the window that make a crash loop.
pub const CRASH_LOOP: usize = 3;

impl CrashBackoff {
    /// A server crashed (exited unasked, or was killed for hanging) at `now_ms`. The first crash
    /// in the window is replaced at once; then each waits twice as long as the last.
    pub fn crashed(&mut self, now_ms: u64) {
        self.crashes.push_back(now_ms);
        self.forget(now_ms);
        let n = self.crashes.len() as u32;
        let delay = if n <= 1 { 0 } else { (1000u64 << (n - 2).min(20)).min(MAX_BACKOFF_MS) };
        self.next_start_ms = now_ms + delay;
    }

    fn forget(&mut self, now_ms: u64) {
        while self.crashes.front().is_some_and(|t| *t + CRASH_WINDOW_MS < now_ms) {
            self.crashes.pop_front();
        }
    }

    pub fn may_start(&self, now_ms: u64) -> bool {
        now_ms >= self.next_start_ms
    }

    /// Crashes within the window.
    pub fn recent(&mut self, now_ms: u64) -> usize {
        self.forget(now_ms);
        self.crashes.len()
    }

    /// A description when the region is crash looping.
    pub fn looping(&mut self, now_ms: u64) -> Option<String> {
        let n = self.recent(now_ms);
        (n >= CRASH_LOOP).then(|| {
            let wait = self.next_start_ms.saturating_sub(now_ms).div_ceil(1000);
            format!("crash loop: {n} crashes in {} min; next start in {wait} s", CRASH_WINDOW_MS / 60_000)
        })
    }
}

/// The actions that move `servers` toward `want`.
pub fn reconcile(want: &Want<'_>, servers: &[Managed], backoff: &CrashBackoff) -> Vec<Action> {
    let now = want.now_ms;
    let mut actions = Vec::new();
    let mut gone: Vec<&str> = Vec::new();
    for s in servers {
        let waited = now.saturating_sub(s.since_ms);
        if s.phase == Phase::Starting && waited > want.start_limit_ms {
            actions.push(Action::Kill { id: s.id.clone(), why: format!("not ready after {} s", waited / 1000) });
            gone.push(&s.id);
        } else if s.phase == Phase::Draining && waited > want.drain_limit_ms {
            actions.push(Action::Kill { id: s.id.clone(), why: format!("still draining after {} s", waited / 1000) });
        }
    }
    let desired = want.desired.clamp(want.min, want.max);
    let active: Vec<&Managed> = servers.iter().filter(|s| s.active() && !gone.contains(&s.id.as_str())).collect();
    let (new, old): (Vec<&Managed>, Vec<&Managed>) = active.iter().partition(|s| s.version == want.version);
    let may_start = backoff.may_start(now);
    let start = |actions: &mut Vec<Action>, n: u32, why: String| {
        if may_start {
            actions.extend((0..n).map(|_| Action::Start { why: why.clone() }));
        }
    };

    if !old.is_empty() {
        let (surge, unavailable) = want.rolling.bounds(desired);
        let room = (desired + surge).saturating_sub(active.len() as u32);
        let missing_new = desired.saturating_sub(new.len() as u32);
        let n = room.min(missing_new);
        if n > 0 {
            let why = format!(
                "rolling update to version {}: {} old, {} new of {desired}",
                want.version,
                old.len(),
                new.len()
            );
            start(&mut actions, n, why);
        }
        let ready = active.iter().filter(|s| s.phase == Phase::Running && s.ready).count() as u32;
        let mut may_drain = ready.saturating_sub(desired.saturating_sub(unavailable));
        let mut order = old.clone();
        order.sort_by_key(|s| (s.phase == Phase::Running && s.ready, s.seats_used, s.worlds));
        // Old servers beyond what the new ones replace yet go once enough new ones serve.
        for s in order {
            let serving = s.phase == Phase::Running && s.ready;
            if serving {
                if may_drain == 0 {
                    break;
                }
                may_drain -= 1;
            }
            actions.push(Action::Drain {
                id: s.id.clone(),
                why: format!("rolling update: version {} replaced by {}", s.version, want.version),
            });
        }
        return actions;
    }

    let count = active.len() as u32;
    if count < desired {
        start(&mut actions, desired - count, format!("{count} of {desired} servers"));
    } else if count > desired {
        let mut empty: Vec<&&Managed> = active.iter().filter(|s| s.empty()).collect();
        // Starting servers first (newest first), then those without a world, then the ones
        // that have been running longest.
        empty.sort_by_key(|s| (s.phase == Phase::Running, s.worlds > 0, std::cmp::Reverse(s.since_ms)));
        for s in empty.into_iter().take((count - desired) as usize) {
            actions.push(Action::Drain {
                id: s.id.clone(),
                why: format!("{count} servers, {desired} wanted; this one is empty"),
            });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Amount;

    const T: u64 = 1_000_000;

    fn server(id: &str, version: &str, phase: Phase, used: u32) -> Managed {
        Managed {
            id: id.into(),
            version: version.into(),
            phase,
            since_ms: T - 10_000,
            ready: phase == Phase::Running,
            seats_used: used,
            worlds: used.div_ceil(30),
        }
    }

    fn want(desired: u32) -> Want<'static> {
        Want {
            desired,
            min: 1,
            max: 6,
            version: "1",
            rolling: RollingUpdate::default(),
            now_ms: T,
            start_limit_ms: 60_000,
            drain_limit_ms: 60_000,
        }
    }

    fn starts(a: &[Action]) -> usize {
        a.iter().filter(|a| matches!(a, Action::Start { .. })).count()
    }

    fn drained(a: &[Action]) -> Vec<&str> {
        a.iter().filter_map(|a| if let Action::Drain { id, .. } = a { Some(id.as_str()) } else { None }).collect()
    }

    #[test]
    fn scale_up_starts_what_is_missing_within_max() {
        let ok = CrashBackoff::default();
        let s = [server("a", "1", Phase::Running, 1500), server("b", "1", Phase::Starting, 0)];
        assert_eq!(starts(&reconcile(&want(4), &s, &ok)), 2, "4 wanted, 2 there (one starting)");
        assert_eq!(starts(&reconcile(&want(9), &s, &ok)), 4, "never above max 6");
        assert!(reconcile(&want(2), &s, &ok).is_empty());
        // Draining servers do not count.
        let s = [server("a", "1", Phase::Running, 10), server("b", "1", Phase::Draining, 0)];
        assert_eq!(starts(&reconcile(&want(2), &s, &ok)), 1);
    }

    #[test]
    fn scale_down_removes_only_empty_servers_and_never_below_min() {
        let ok = CrashBackoff::default();
        let s = [
            server("busy", "1", Phase::Running, 40),
            server("idle", "1", Phase::Running, 0),
            server("fresh", "1", Phase::Starting, 0),
            server("full", "1", Phase::Running, 1500),
        ];
        // Two too many: the starting one and the idle one go; bots stay where they play.
        let a = reconcile(&want(2), &s, &ok);
        assert_eq!(drained(&a), vec!["fresh", "idle"]);
        // Three too many, but only two are empty: the rest wait for their bots to leave.
        assert_eq!(drained(&reconcile(&want(1), &s, &ok)), vec!["fresh", "idle"]);
        // desired 0 is raised to min 1.
        let s = [server("idle", "1", Phase::Running, 0)];
        assert!(reconcile(&want(0), &s, &ok).is_empty());
        // An idle loaded world (no seat taken, none in a grace period, none reserved) does not
        // keep a server, but a server without one goes first.
        let s = [Managed { worlds: 1, ..server("b", "1", Phase::Running, 0) }, server("a", "1", Phase::Running, 0)];
        assert_eq!(drained(&reconcile(&want(1), &s, &ok)), vec!["a"]);
        assert_eq!(drained(&reconcile(&want(0), &s[..1], &ok)), Vec::<&str>::new(), "never below min");
        let s = [Managed { worlds: 1, ..server("b", "1", Phase::Running, 0) }, server("c", "1", Phase::Running, 3)];
        assert_eq!(drained(&reconcile(&want(1), &s, &ok)), vec!["b"]);
    }

    #[test]
    fn a_rolling_update_surges_then_drains_old_servers_as_new_ones_serve() {
        let ok = CrashBackoff::default();
        let mut w = want(4);
        w.version = "2";
        w.rolling = RollingUpdate { max_surge: Amount::Count(1), max_unavailable: Amount::Count(0) };
        let old = |id: &str, used| server(id, "1", Phase::Running, used);
        // Step 1: four old servers, surge 1: one new server starts, nothing drains (no spare).
        let s = vec![old("a", 900), old("b", 100), old("c", 1200), old("d", 40)];
        let a = reconcile(&w, &s, &ok);
        assert_eq!((starts(&a), drained(&a)), (1, vec![]));
        // Step 2: the new one serves: 5 ready, 4 needed: drain the emptiest old one.
        let mut s2 = s.clone();
        s2.push(server("e", "2", Phase::Running, 0));
        let a = reconcile(&w, &s2, &ok);
        assert_eq!((starts(&a), drained(&a)), (0, vec!["d"]));
        // Step 3: d draining; 4 active (3 old + 1 new), room for one more new.
        s2[3].phase = Phase::Draining;
        let a = reconcile(&w, &s2, &ok);
        assert_eq!((starts(&a), drained(&a)), (1, vec![]));
        // With max unavailable 1 and no surge, an old one drains first.
        w.rolling = RollingUpdate { max_surge: Amount::Count(0), max_unavailable: Amount::Count(1) };
        let a = reconcile(&w, &s, &ok);
        assert_eq!((starts(&a), drained(&a)), (0, vec!["d"]));
        // Old servers that are not serving go without waiting.
        let mut s3 = s.clone();
        s3[0].ready = false;
        w.rolling = RollingUpdate { max_surge: Amount::Count(1), max_unavailable: Amount::Count(0) };
        let a = reconcile(&w, &s3, &ok);
        assert_eq!(drained(&a), vec!["a"]);
    }

    #[test]
    fn a_rolling_update_ends_with_every_server_on_the_new_version() {
        // Run the reconciler against a model where starts serve at once and drains finish at
        // once; the update must converge without ever dropping below desired − unavailable.
        let ok = CrashBackoff::default();
        let mut w = want(4);
        w.version = "2";
        let mut servers: Vec<Managed> = (0..4).map(|i| server(&format!("old{i}"), "1", Phase::Running, 500)).collect();
        let mut next = 0;
        for _ in 0..20 {
            let actions = reconcile(&w, &servers, &ok);
            let (_, unavailable) = w.rolling.bounds(4);
            for a in actions {
                match a {
                    Action::Start { .. } => {
                        servers.push(server(&format!("new{next}"), "2", Phase::Running, 0));
                        next += 1;
                    }
                    Action::Drain { id, .. } => servers.retain(|s| s.id != id),
                    Action::Kill { .. } => panic!("nothing hangs here"),
                }
            }
            let ready = servers.iter().filter(|s| s.ready).count() as u32;
            assert!(ready >= 4 - unavailable, "{ready} ready");
            assert!(servers.len() as u32 <= 4 + w.rolling.bounds(4).0);
        }
        assert_eq!(servers.len(), 4);
        assert!(servers.iter().all(|s| s.version == "2"), "{servers:?}");
    }

    #[test]
    fn crashes_back_off_and_are_reported_as_a_loop() {
        let mut b = CrashBackoff::default();
        b.crashed(T);
        assert!(b.may_start(T), "the first crash is replaced at once");
        b.crashed(T + 1000);
        assert!(!b.may_start(T + 1500) && b.may_start(T + 2000), "then 1 s");
        b.crashed(T + 2000);
        assert!(!b.may_start(T + 3999) && b.may_start(T + 4000), "then 2 s");
        assert_eq!(b.looping(T + 2000).unwrap(), "crash loop: 3 crashes in 10 min; next start in 2 s");
        for i in 0..20 {
            b.crashed(T + 3000 + i);
        }
        assert!(
            !b.may_start(T + 3019 + MAX_BACKOFF_MS - 1) && b.may_start(T + 3019 + MAX_BACKOFF_MS),
            "capped at 5 min"
        );
        // While backing off, missing servers are not started.
        let s = [server("a", "1", Phase::Running, 10)];
        assert_eq!(starts(&reconcile(&want(3), &s, &b)), 0);
        // Ten quiet minutes forget the crashes.
        assert_eq!(b.recent(T + 3019 + CRASH_WINDOW_MS + 1), 0);
        assert!(b.looping(T + 3019 + CRASH_WINDOW_MS + 1).is_none());
    }

    #[test]
    fn hung_starts_and_drains_are_killed() {
        let ok = CrashBackoff::default();
        let mut stuck = server("s", "1", Phase::Starting, 0);
        stuck.since_ms = T - 61_000;
        let mut slow = server("d", "1", Phase::Draining, 0);
        slow.since_ms = T - 61_000;
        let a = reconcile(&want(1), &[stuck, slow, server("a", "1", Phase::Running, 5)], &ok);
        assert_eq!(a.len(), 2, "{a:?}");
        assert!(matches!(&a[0], Action::Kill { id, why } if id == "s" && why == "not ready after 61 s"));
        assert!(matches!(&a[1], Action::Kill { id, .. } if id == "d"));
        // The killed start no longer counts: one is started in its place.
        let mut stuck = server("s", "1", Phase::Starting, 0);
        stuck.since_ms = T - 61_000;
        assert_eq!(starts(&reconcile(&want(1), &[stuck], &ok)), 1);
    }
}
