//! A region's count, decided: its policy's decision, held by the scale-down window, with the
//! change (from, to, which policy, why) when it differs from the last. Pure; shared by the local
//! controller and the Kubernetes operator.

use crate::load::RegionLoad;
use crate::policy::{Bounds, PolicyState, Stabilizer, decide};
use crate::spec::RegionFleet;

/// What a region's sizing remembers between syncs.
#[derive(Debug, Clone, Default)]
pub struct Sizing {
    policy: PolicyState,
    stabilizer: Stabilizer,
    desired: Option<u32>,
}

/// A count that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub from: u32,
    pub to: u32,
    pub policy: String,
    pub reason: String,
}

impl Change {
    pub fn direction(&self) -> &'static str {
        if self.to >= self.from { "up" } else { "down" }
    }
}

impl Sizing {
    /// The count last decided.
    pub fn desired(&self) -> Option<u32> {
        self.desired
    }

    /// Decide at `now_ms` with the region's `load` and its `active` servers (not draining).
    pub fn size(&mut self, spec: &RegionFleet, load: &RegionLoad, active: u32, now_ms: u64) -> (u32, Option<Change>) {
        let bounds = Bounds { min: spec.min_servers, max: spec.max_servers };
        let mut d = decide(&spec.autoscale, load, now_ms, bounds, &mut self.policy);
        let (held, why) = self.stabilizer.apply(now_ms, d.desired, spec.scale_down_delay_secs * 1000);
        if let Some(why) = why {
            d.desired = held.clamp(spec.min_servers, spec.max_servers);
            d.reason = format!("{}; {why}", d.reason);
        }
        let change = (self.desired != Some(d.desired)).then(|| Change {
            from: self.desired.unwrap_or(active),
            to: d.desired,
            policy: d.policy,
            reason: d.reason,
        });
        self.desired = Some(d.desired);
        (d.desired, change)
    }

    /// Start from `count` servers at `now_ms` as if the policy had wanted them (a new operator
    /// leader taking over a running region): a lower count then waits the scale-down window, as
    /// it would have under the previous leader, instead of draining servers at once.
    pub fn seed(&mut self, count: u32, now_ms: u64) {
        self.stabilizer.apply(now_ms, count, 0);
    }

    /// Without the allocator's view nothing can be measured: hold the last count (the minimum
    /// at first).
    pub fn hold(&mut self, spec: &RegionFleet) -> u32 {
        *self.desired.get_or_insert(spec.min_servers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::FleetSpec;

    #[test]
    fn a_change_is_reported_once_and_held_without_a_view() {
        let spec = FleetSpec::embedded_default().regions.remove(0);
        let mut s = Sizing::default();
        let load = RegionLoad::default();
        let (n, change) = s.size(&spec, &load, 0, 1_000);
        let change = change.expect("the first decision is a change");
        assert_eq!((change.from, change.to, change.direction()), (0, n, "up"));
        assert!(n >= spec.min_servers);
        assert_eq!(s.size(&spec, &load, n, 2_000).1, None, "the same count again is no change");
        assert_eq!(s.hold(&spec), n, "without a view, the last count holds");
        assert_eq!(Sizing::default().hold(&spec), spec.min_servers);
    }

    #[test]
    fn a_seeded_count_waits_the_scale_down_window() {
        let mut spec = FleetSpec::embedded_default().regions.remove(0);
        spec.scale_down_delay_secs = 30;
        let mut s = Sizing::default();
        s.seed(4, 1_000);
        // Four empty servers of 1,500 seats: a buffer of 1,500 seats wants one.
        let empty = RegionLoad::of(&[], 4, 1500, 50);
        let (n, change) = s.size(&spec, &empty, 4, 1_000);
        assert_eq!(n, 4, "the empty region would want {} now, but 4 ran", spec.min_servers);
        assert!(change.unwrap().reason.contains("holding 4"));
        let (n, _) = s.size(&spec, &empty, 4, 31_001);
        assert!(n < 4, "after the window it scales down");
    }
}
