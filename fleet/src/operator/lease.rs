//! Leader election on a `coordination.k8s.io/v1` Lease, so that of the operator's replicas one
//! acts at a time. The deciding is pure ([`Elector`]); [`LeaseLock`] is the thin I/O.
//!
//! No clock is compared across machines: a follower takes the lease only when it has seen the
//! lease's `resourceVersion` stay the same for a whole lease duration *on its own clock*, and a
//! leader stops acting when its last successful renewal is older than the renew deadline (shorter
//! than the duration) on *its* clock. Every write carries the `resourceVersion` it read, so of two
//! replicas writing at once the API server takes one and refuses the other (409).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

/// What a replica read of the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub holder: Option<String>,
    pub resource_version: String,
}

/// What to do with the lease now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// There is none: create it, held by us.
    Create,
    /// Ours: write it again (a renewal).
    Renew,
    /// Another's, and it stopped renewing (or released it): take it over.
    TakeOver { from: Option<String> },
    /// Another's, alive: wait.
    Follow { holder: String },
}

/// One replica's view of the election.
#[derive(Debug, Clone)]
pub struct Elector {
    me: String,
    duration_ms: u64,
    renew_deadline_ms: u64,
    /// The resource version last seen and when it was first seen (our clock, ms).
    observed: Option<(String, u64)>,
    /// When we last held it, by a write the API server took (our clock, ms).
    renewed_ms: Option<u64>,
}

impl Elector {
    /// `duration`: how long a lease lasts unrenewed; the leader gives up after two thirds of it.
    pub fn new(me: String, duration: Duration) -> Self {
        let duration_ms = duration.as_millis() as u64;
        Elector { me, duration_ms, renew_deadline_ms: duration_ms * 2 / 3, observed: None, renewed_ms: None }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn duration_secs(&self) -> i32 {
        (self.duration_ms / 1000).max(1) as i32
    }

    /// Decide from what was read at `now_ms` (`None`: no lease exists).
    pub fn step(&mut self, seen: Option<&Seen>, now_ms: u64) -> Step {
        let Some(seen) = seen else { return Step::Create };
        match &self.observed {
            Some((rv, _)) if *rv == seen.resource_version => {}
            _ => self.observed = Some((seen.resource_version.clone(), now_ms)),
        }
        match seen.holder.as_deref() {
            Some(h) if h == self.me => Step::Renew,
            None | Some("") => Step::TakeOver { from: None },
            Some(h) => {
                let since = self.observed.as_ref().map_or(now_ms, |(_, t)| *t);
                if now_ms.saturating_sub(since) >= self.duration_ms {
                    Step::TakeOver { from: Some(h.to_owned()) }
                } else {
                    Step::Follow { holder: h.to_owned() }
                }
            }
        }
    }

    /// The API server took our write at `now_ms`: we hold the lease.
    pub fn held(&mut self, now_ms: u64) {
        self.renewed_ms = Some(now_ms);
    }

    /// Our write was refused or failed: someone else may hold it.
    pub fn lost(&mut self) {
        self.renewed_ms = None;
    }

    /// Whether we may act at `now_ms`: we renewed within the renew deadline.
    pub fn leading(&self, now_ms: u64) -> bool {
        self.renewed_ms.is_some_and(|t| now_ms.saturating_sub(t) < self.renew_deadline_ms)
    }
}

/// The Lease object in the API.
#[derive(Debug)]
pub struct LeaseLock {
    pub api: Api<Lease>,
    pub name: String,
}

impl LeaseLock {
    /// Read the lease, decide, write; whether we hold it after this round.
    pub async fn round(&self, elector: &mut Elector, now_ms: u64) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let seen = current.as_ref().map(|l| Seen {
            holder: l.spec.as_ref().and_then(|s| s.holder_identity.clone()),
            resource_version: l.metadata.resource_version.clone().unwrap_or_default(),
        });
        let step = elector.step(seen.as_ref(), now_ms);
        let now = MicroTime(jiff::Timestamp::now());
        let written = match step {
            Step::Follow { .. } => {
                elector.lost();
                return Ok(false);
            }
            Step::Create => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(elector.me().to_owned()),
                        lease_duration_seconds: Some(elector.duration_secs()),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Step::Renew | Step::TakeOver { .. } => {
                let mut lease = current.unwrap_or_default();
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if let Step::TakeOver { from } = &step {
                    tracing::warn!(previous = from.as_deref(), me = elector.me(), "taking over the operator's lease");
                    spec.holder_identity = Some(elector.me().to_owned());
                    spec.acquire_time = Some(now.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(elector.duration_secs());
                spec.renew_time = Some(now);
                // Carries the resource version read: a concurrent write makes this one a 409.
                self.api.replace(&self.name, &PostParams::default(), &lease).await
            }
        };
        match written {
            Ok(_) => {
                elector.held(now_ms);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                elector.lost();
                Ok(false)
            }
            Err(e) => {
                elector.lost();
                Err(e)
            }
        }
    }
}

impl LeaseLock {
    /// Give the lease up if we hold it (no holder: the next replica takes it at once). Whether
    /// we released it.
    pub async fn release(&self, elector: &mut Elector) -> Result<bool, kube::Error> {
        elector.lost();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(false) };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(elector.me()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(holder: &str, rv: &str) -> Seen {
        Seen { holder: Some(holder.into()), resource_version: rv.into() }
    }

    #[test]
    fn a_live_holder_is_followed_and_a_silent_one_replaced() {
        let mut b = Elector::new("b".into(), Duration::from_secs(15));
        assert_eq!(b.step(None, 0), Step::Create);
        assert_eq!(b.step(Some(&seen("a", "1")), 1_000), Step::Follow { holder: "a".into() });
        // a renews: the version moves, b's count starts again.
        assert_eq!(b.step(Some(&seen("a", "2")), 14_000), Step::Follow { holder: "a".into() });
        assert_eq!(b.step(Some(&seen("a", "2")), 28_999), Step::Follow { holder: "a".into() });
        // The same version for a whole duration, on b's own clock: a is gone.
        assert_eq!(b.step(Some(&seen("a", "2")), 29_000), Step::TakeOver { from: Some("a".into()) });
        // Released (no holder): taken at once.
        let mut c = Elector::new("c".into(), Duration::from_secs(15));
        assert_eq!(
            c.step(Some(&Seen { holder: None, resource_version: "9".into() }), 0),
            Step::TakeOver { from: None }
        );
    }

    #[test]
    fn a_leader_acts_only_within_its_renew_deadline() {
        let mut a = Elector::new("a".into(), Duration::from_secs(15));
        assert!(!a.leading(0));
        assert_eq!(a.step(Some(&seen("a", "1")), 0), Step::Renew);
        a.held(0);
        assert!(a.leading(9_999));
        assert!(!a.leading(10_000), "two thirds of the duration without a renewal: stop acting");
        a.held(10_000);
        assert!(a.leading(10_001));
        a.lost();
        assert!(!a.leading(10_001));
    }

    #[test]
    fn of_two_replicas_only_one_leads() {
        // Both see the lease free; the API server takes the first write (version 1 → 2) and
        // refuses the second (it carries version 1): only the first holds it.
        let (mut a, mut b) =
            (Elector::new("a".into(), Duration::from_secs(15)), Elector::new("b".into(), Duration::from_secs(15)));
        let free = Seen { holder: None, resource_version: "1".into() };
        assert_eq!(a.step(Some(&free), 0), Step::TakeOver { from: None });
        assert_eq!(b.step(Some(&free), 0), Step::TakeOver { from: None });
        a.held(0);
        b.lost();
        assert!(a.leading(1) && !b.leading(1));
        // Then b reads a's lease, and follows while a renews.
        assert_eq!(b.step(Some(&seen("a", "2")), 2_000), Step::Follow { holder: "a".into() });
        assert_eq!(a.step(Some(&seen("a", "2")), 2_000), Step::Renew);
    }
}
