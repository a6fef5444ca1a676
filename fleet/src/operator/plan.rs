//! One sync of one `ArenaFleet`, decided: its pods (what each server does) and the allocator's
//! view → what to delete as crashed, what to start, drain and kill, the count's change, and the
//! status to write. Pure: the same sizing (`sizing.rs`) and reconciler (`reconcile.rs`) as the
//! local fleet; the operator (`reconciler.rs`) carries the plan out through the Kubernetes API.

use std::collections::{HashMap, HashSet};

use arena_sdk::allocator_api::ServerSummary;

use crate::crd::{ArenaFleetStatus, LastDecision};
use crate::load::{RegionLoad, takes_bots};
use crate::operator::pods::{PodPhase, PodView};
use crate::reconcile::{Action, CrashBackoff, Managed, Phase, Want, reconcile};
use crate::sizing::{Change, Sizing};
use crate::spec::RegionFleet;

/// A pod still not running (scheduled, its image pulled, started) after this long is given up.
pub const START_LIMIT_MS: u64 = 180_000;
/// A draining pod still there this long after its termination grace period ended is deleted at
/// once (a draining pod's phase starts when its grace period ends: `pods.rs`), so a drain gets
/// the whole grace period the pod was given, however long.
pub const DRAIN_LIMIT_MS: u64 = 60_000;

/// What the operator remembers of a fleet between syncs (lost when another replica takes over:
/// it then starts from what the cluster and the allocator say).
#[derive(Debug, Clone, Default)]
pub struct Memory {
    sizing: Sizing,
    crashes: CrashBackoff,
    last: Option<LastDecision>,
    /// Exited pods already counted as crashes (they stay listed until deleted).
    counted: HashSet<String>,
    /// The first sync seeded the sizing with the servers found running.
    seeded: bool,
}

/// What one sync does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Pods whose server exited unasked, seen for the first time: a crash each (an event, the
    /// allocator told).
    pub crashed: Vec<PodView>,
    /// Exited pods to delete.
    pub remove: Vec<String>,
    pub actions: Vec<Action>,
    pub change: Option<Change>,
    pub status: ArenaFleetStatus,
}

fn rfc3339(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// Decide one sync at `now_ms` (ms since the Unix epoch). `view` is the allocator's, `None`
/// when it could not be read: the count then holds and nothing is drained (emptiness unknown).
pub fn plan(
    spec: &RegionFleet,
    pods: &[PodView],
    view: Option<&[ServerSummary]>,
    mem: &mut Memory,
    now_ms: u64,
) -> Plan {
    let by_id: HashMap<&str, &ServerSummary> =
        view.unwrap_or_default().iter().map(|s| (s.server_id.as_str(), s)).collect();

    let mut crashed = Vec::new();
    let mut remove = Vec::new();
    for p in pods {
        if let PodPhase::Exited { .. } = p.phase {
            remove.push(p.name.clone());
            if mem.counted.insert(p.name.clone()) {
                mem.crashes.crashed(now_ms);
                crashed.push(p.clone());
            }
        }
    }
    mem.counted.retain(|n| pods.iter().any(|p| &p.name == n));

    let managed: Vec<Managed> = pods
        .iter()
        .filter_map(|p| {
            let phase = p.phase.managed()?;
            let seen = by_id.get(p.name.as_str());
            Some(Managed {
                id: p.name.clone(),
                version: p.version.clone(),
                phase,
                since_ms: p.since_ms,
                // Ready: its probe passes and, when the allocator can be read, it places bots there.
                ready: p.ready && (view.is_none() || seen.is_some_and(|s| takes_bots(s))),
                seats_used: seen.map_or(0, |s| s.seats_used),
                worlds: seen.map_or(0, |s| s.worlds),
            })
        })
        .collect();
    let active = managed.iter().filter(|m| m.phase != Phase::Draining).count() as u32;
    let reported: Vec<&ServerSummary> = managed.iter().filter_map(|m| by_id.get(m.id.as_str()).copied()).collect();
    let load = RegionLoad::of(&reported, active, spec.template.seats(), u64::from(spec.template.max_worlds));

    if !mem.seeded {
        // A new leader (or a restarted operator) finds servers running: they were wanted.
        mem.sizing.seed(active, now_ms);
        mem.seeded = true;
    }
    let (desired, change) = match view {
        Some(_) => mem.sizing.size(spec, &load, active, now_ms),
        None => (mem.sizing.hold(spec), None),
    };
    if let Some(c) = &change {
        mem.last = Some(LastDecision {
            time: rfc3339(now_ms),
            from: c.from,
            to: c.to,
            policy: c.policy.clone(),
            reason: c.reason.clone(),
        });
    }
    let want = Want {
        desired,
        min: spec.min_servers,
        max: spec.max_servers,
        version: &spec.template.version,
        rolling: spec.rolling_update,
        now_ms,
        start_limit_ms: START_LIMIT_MS,
        drain_limit_ms: DRAIN_LIMIT_MS,
    };
    let mut actions = reconcile(&want, &managed, &mem.crashes);
    if view.is_none() {
        actions.retain(|a| !matches!(a, Action::Drain { .. }));
    }

    let count = |p: Phase| managed.iter().filter(|m| m.phase == p).count() as u32;
    let ready = managed.iter().filter(|m| m.phase == Phase::Running && m.ready).count() as u32;
    let seats = u64::from(ready) * spec.template.seats();
    let status = ArenaFleetStatus {
        observed_generation: None,
        desired,
        replicas: managed.len() as u32,
        starting: count(Phase::Starting),
        ready,
        draining: count(Phase::Draining),
        seats,
        seats_used: load.seats_used,
        utilisation: if seats == 0 { 0.0 } else { load.seats_used as f64 / seats as f64 },
        allocator_reachable: view.is_some(),
        last_decision: mem.last.clone(),
        crash_loop: mem.crashes.looping(now_ms),
    };
    Plan { crashed, remove, actions, change, status }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::tests::server;
    use crate::spec::{FleetSpec, Policy};

    fn spec() -> RegionFleet {
        let mut r = FleetSpec::embedded_default().regions.remove(0);
        r.min_servers = 2;
        r.max_servers = 5;
        r.scale_down_delay_secs = 0;
        r
    }

    fn pod(name: &str, phase: PodPhase) -> PodView {
        PodView {
            name: name.into(),
            version: "1".into(),
            phase,
            since_ms: 0,
            ready: phase == PodPhase::Running,
            ws_url: Some(format!("ws://{name}/ws")),
        }
    }

    fn starts(p: &Plan) -> usize {
        p.actions.iter().filter(|a| matches!(a, Action::Start { .. })).count()
    }

    #[test]
    fn a_new_fleet_starts_its_minimum_and_says_why() {
        let mut mem = Memory::default();
        let p = plan(&spec(), &[], Some(&[]), &mut mem, 1_000);
        assert_eq!(starts(&p), 2);
        let change = p.change.unwrap();
        assert_eq!((change.from, change.to), (0, 2));
        let last = p.status.last_decision.unwrap();
        assert_eq!((last.from, last.to, last.time.as_str()), (0, 2, "1970-01-01T00:00:01Z"));
        assert_eq!((p.status.desired, p.status.replicas, p.status.allocator_reachable), (2, 0, true));
    }

    #[test]
    fn a_crash_is_counted_once_and_its_pod_removed_until_gone() {
        let mut mem = Memory::default();
        let pods = [pod("a", PodPhase::Running), pod("b", PodPhase::Exited { code: Some(101) })];
        let view = [server("a", 0, None)];
        let p = plan(&spec(), &pods, Some(&view), &mut mem, 1_000);
        assert_eq!(p.crashed.len(), 1);
        assert_eq!(p.remove, ["b"]);
        assert_eq!(starts(&p), 1, "the first crash is replaced at once");
        let p = plan(&spec(), &pods, Some(&view), &mut mem, 2_000);
        assert!(p.crashed.is_empty(), "still listed: not a second crash");
        assert_eq!(p.remove, ["b"], "deleted again until it is gone");
    }

    #[test]
    fn a_new_leader_does_not_drain_what_it_finds_before_the_window() {
        let mut s = spec();
        s.min_servers = 0;
        s.scale_down_delay_secs = 30;
        let pods = [pod("a", PodPhase::Running), pod("b", PodPhase::Running), pod("c", PodPhase::Running)];
        let view = [server("a", 0, None), server("b", 0, None), server("c", 0, None)];
        let mut mem = Memory::default();
        let p = plan(&s, &pods, Some(&view), &mut mem, 1_000);
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert_eq!(p.status.desired, 3);
        let p = plan(&s, &pods, Some(&view), &mut mem, 32_000);
        assert!(p.actions.iter().any(|a| matches!(a, Action::Drain { .. })), "after the window: {:?}", p.actions);
    }

    #[test]
    fn without_the_allocator_nothing_drains_and_the_count_holds() {
        let mut mem = Memory::default();
        let mut s = spec();
        s.min_servers = 0;
        s.autoscale = Policy::Buffer(crate::spec::BufferPolicy {
            unit: crate::spec::Unit::Servers,
            size: crate::spec::Amount::Count(0),
        });
        let pods = [pod("a", PodPhase::Running), pod("b", PodPhase::Running)];
        let p = plan(&s, &pods, None, &mut mem, 1_000);
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert!(!p.status.allocator_reachable);
        assert_eq!(p.status.ready, 2, "readiness from the probes alone");
        // With the view: two empty servers and a buffer of none → drained to zero.
        let view = [server("a", 0, None), server("b", 0, None)];
        let p = plan(&s, &pods, Some(&view), &mut mem, 2_000);
        assert_eq!(p.actions.iter().filter(|a| matches!(a, Action::Drain { .. })).count(), 2);
    }
}
