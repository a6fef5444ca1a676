//! The operator's reconciler: for one `ArenaFleet`, read its pods and the allocator's view,
//! [`plan`](super::plan::plan), then act through the Kubernetes API — create pods, delete a
//! pod gracefully to drain it (the gameserver drains on SIGTERM within the pod's termination
//! grace period: it stops taking bots, saves its worlds and hands them back), delete at once to
//! kill — publish Events for what it did, and write the status. A finalizer drains every pod
//! before the fleet may go.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodTemplateSpec};
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::finalizer::{Event as Finalize, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use parking_lot::Mutex;

use crate::allocator::AllocatorLink;
use crate::crd::ArenaFleet;
use crate::metrics::{self, Metrics};
use crate::operator::events::{Events, Kind};
use crate::operator::plan::{Memory, plan};
use crate::operator::pods::{PodPhase, check_names, gameserver_pod, selector, view};
use crate::reconcile::Action;

/// The finalizer that makes deleting a fleet drain its servers first.
pub const FINALIZER: &str = "arena.dev/drain";
/// How soon a failed reconciliation is tried again.
pub const RETRY: Duration = Duration::from_secs(5);
/// Seconds a pod that is killed gets (SIGTERM, then SIGKILL): not 0, which deletes the pod
/// object at once while its process may still run.
pub const KILL_GRACE_SECS: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the fleet has no namespace")]
    NoNamespace,
    #[error("cannot make a gameserver pod: {0}")]
    Pod(String),
    #[error("{0} gameserver pods still draining")]
    Draining(usize),
    #[error("{0}")]
    Finalizer(String),
}

/// What every reconciliation shares.
pub struct Ctx {
    pub client: Client,
    pub allocator: AllocatorLink,
    /// The cluster's gameserver pod template (image, resources, security, scheduling).
    pub template: PodTemplateSpec,
    pub events: Events,
    pub metrics: Arc<Metrics>,
    /// How often each fleet is looked at when nothing happens; no fleet is looked at more often
    /// than twice per period unless its spec changes (its own status writes would wake it).
    pub sync: Duration,
    /// Milliseconds since the Unix epoch.
    pub clock: fn() -> u64,
    /// The ArenaFleet kind, as the watch reads it: untyped, so that one object the operator
    /// cannot read breaks only its own reconciliation, never the watch of every fleet.
    pub resource: ApiResource,
    memory: Mutex<HashMap<String, Memory>>,
    /// When each fleet was last looked at, and at which generation of its spec.
    looked: Mutex<HashMap<String, (u64, Option<i64>)>>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("allocator", &self.allocator).field("sync", &self.sync).finish_non_exhaustive()
    }
}

impl Ctx {
    pub fn new(
        client: Client,
        allocator: AllocatorLink,
        template: PodTemplateSpec,
        events: Events,
        metrics: Arc<Metrics>,
        sync: Duration,
        clock: fn() -> u64,
    ) -> Self {
        Ctx {
            client,
            allocator,
            template,
            events,
            metrics,
            sync,
            clock,
            resource: ApiResource::erase::<ArenaFleet>(&()),
            memory: Mutex::new(HashMap::new()),
            looked: Mutex::new(HashMap::new()),
        }
    }
}

/// The key of a fleet's memory: its uid (a fleet deleted and made again starts afresh).
fn key(obj: &DynamicObject) -> String {
    obj.uid().unwrap_or_else(|| format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()))
}

/// Reconcile one fleet (the kube-runtime controller calls this on every change and every sync).
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Requeue, Error> {
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ctx.resource);
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalize::Apply(o) => apply(&o, &ctx).await,
            Finalize::Cleanup(o) => cleanup(&o, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

/// A failed reconciliation is logged, counted and tried again soon.
pub fn error_policy(obj: Arc<DynamicObject>, error: &Error, ctx: Arc<Ctx>) -> Requeue {
    if matches!(error, Error::Draining(_)) {
        tracing::info!(fleet = obj.name_any(), "{error}");
    } else {
        tracing::warn!(fleet = obj.name_any(), %error, "reconciliation failed");
        ctx.metrics.reconcile_errors.inc();
    }
    Requeue::requeue(RETRY)
}

async fn publish(ctx: &Ctx, regarding: &ObjectReference, kind: Kind, reason: &str, action: &str, note: String) {
    ctx.events.publish(regarding, kind, reason, action, &note).await;
}

/// Not looked at since less than half a sync period, at the same generation: the wake-up of
/// its own status write, or of its pods changing. Wait for the period (a spec change, a
/// deletion and the period itself still act at once).
fn too_soon(ctx: &Ctx, obj: &DynamicObject, now: u64) -> Option<Duration> {
    let period = ctx.sync.as_millis() as u64;
    let mut looked = ctx.looked.lock();
    let k = key(obj);
    let generation = obj.metadata.generation;
    if obj.metadata.deletion_timestamp.is_none()
        && let Some((at, g)) = looked.get(&k)
        && *g == generation
        && now < at + period / 2
    {
        return Some(Duration::from_millis(at + period - now));
    }
    looked.insert(k, (now, generation));
    None
}

async fn apply(obj: &DynamicObject, ctx: &Ctx) -> Result<Requeue, Error> {
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    let regarding = obj.object_ref(&ctx.resource);
    let now = (ctx.clock)();
    if let Some(wait) = too_soon(ctx, obj, now) {
        return Ok(Requeue::requeue(wait));
    }
    // Read here, not by the watch: a fleet the API server took but this operator cannot read (a
    // nested policy past the schema's depth with a typo, say) is reported, and only it waits.
    let fleet: ArenaFleet = match serde_json::to_value(obj).and_then(serde_json::from_value::<ArenaFleet>) {
        Ok(f) => f,
        Err(e) => {
            publish(ctx, &regarding, Kind::Warning, "InvalidSpec", "Validate", format!("cannot read the fleet: {e}"))
                .await;
            return Ok(Requeue::requeue(ctx.sync * 6));
        }
    };
    let fleet = &fleet;
    let spec = &fleet.spec;
    if let Err(e) = spec.validate().map_err(|e| e.to_string()).and_then(|()| check_names(fleet)) {
        publish(ctx, &regarding, Kind::Warning, "InvalidSpec", "Validate", e).await;
        return Ok(Requeue::requeue(ctx.sync * 6));
    }
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = pods_api.list(&ListParams::default().labels(&selector(&name))).await?;
    let views: Vec<_> = pods.items.iter().filter_map(view).collect();
    let seen = ctx.allocator.view().await;
    if seen.is_none() {
        ctx.metrics.allocator_errors.inc();
    }
    let k = key(obj);
    let mut mem = ctx.memory.lock().remove(&k).unwrap_or_default();
    let p = plan(spec, &views, seen.as_deref(), &mut mem, now);
    ctx.memory.lock().insert(k, mem);

    let labels = metrics::region(&spec.name);
    for crashed in &p.crashed {
        ctx.metrics.crashes.get_or_create(&labels).inc();
        let code = match crashed.phase {
            PodPhase::Exited { code: Some(c) } => format!("exit code {c}"),
            _ => "no exit code".into(),
        };
        let told = match &crashed.ws_url {
            Some(ws) => ctx.allocator.farewell(&crashed.name, &spec.name, ws, &spec.template).await,
            None => false,
        };
        let note = format!(
            "gameserver {} exited unasked ({code}){}",
            crashed.name,
            if told { "; the allocator moves its worlds now" } else { "" }
        );
        publish(ctx, &regarding, Kind::Warning, "Crashed", "Observe", note).await;
    }
    for pod in &p.remove {
        delete(&pods_api, pod, Some(0)).await?;
    }
    if let Some(c) = &p.change {
        ctx.metrics
            .scaling_events
            .get_or_create(&vec![
                ("region", spec.name.clone()),
                ("direction", c.direction().to_owned()),
                ("policy", c.policy.clone()),
            ])
            .inc();
        let note = format!("{} → {} by {}: {}", c.from, c.to, c.policy, c.reason);
        tracing::info!(fleet = name, "{note}");
        publish(ctx, &regarding, Kind::Normal, "Scaled", "Scale", note).await;
    }
    for action in &p.actions {
        match action {
            Action::Start { why } => {
                let pod = gameserver_pod(&ctx.template, fleet, &ctx.allocator.urls).map_err(Error::Pod)?;
                let made = pods_api.create(&PostParams::default(), &pod).await?;
                let note = format!("started {} (version {}): {why}", made.name_any(), spec.template.version);
                publish(ctx, &regarding, Kind::Normal, "Started", "Start", note).await;
            }
            Action::Drain { id, why } => {
                delete(&pods_api, id, None).await?;
                publish(ctx, &regarding, Kind::Normal, "Draining", "Drain", format!("draining {id}: {why}")).await;
            }
            Action::Kill { id, why } => {
                delete(&pods_api, id, Some(KILL_GRACE_SECS)).await?;
                publish(ctx, &regarding, Kind::Warning, "Killed", "Kill", format!("killed {id}: {why}")).await;
            }
        }
    }

    ctx.metrics.desired.get_or_create(&labels).set(i64::from(p.status.desired));
    ctx.metrics.max_servers.get_or_create(&labels).set(i64::from(spec.max_servers));
    ctx.metrics.min_servers.get_or_create(&labels).set(i64::from(spec.min_servers));
    for (phase, n) in [
        ("starting", p.status.starting),
        ("running", p.status.replicas - p.status.starting - p.status.draining),
        ("draining", p.status.draining),
    ] {
        ctx.metrics
            .servers
            .get_or_create(&vec![("region", spec.name.clone()), ("phase", phase.to_owned())])
            .set(i64::from(n));
    }
    ctx.metrics.seats_used.get_or_create(&labels).set(p.status.seats_used as i64);
    ctx.metrics.seats.get_or_create(&labels).set(p.status.seats as i64);

    let mut status = p.status;
    status.observed_generation = fleet.metadata.generation;
    let api: Api<ArenaFleet> = Api::namespaced(ctx.client.clone(), &ns);
    // A merge patch: fields that are now absent (no crash loop) are written as null, which
    // removes them.
    let patch = serde_json::json!({ "status": status });
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(Requeue::requeue(ctx.sync))
}

/// Delete a pod: gracefully (its termination grace period: the gameserver drains) or at once.
/// A pod already gone is fine.
async fn delete(api: &Api<Pod>, name: &str, grace_secs: Option<u32>) -> Result<(), Error> {
    let params = DeleteParams { grace_period_seconds: grace_secs, ..DeleteParams::default() };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The fleet is being deleted: drain every pod, and let it go once none is left.
async fn cleanup(obj: &DynamicObject, ctx: &Ctx) -> Result<Requeue, Error> {
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    let regarding = obj.object_ref(&ctx.resource);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = pods_api.list(&ListParams::default().labels(&selector(&name))).await?;
    let views: Vec<_> = pods.items.iter().filter_map(view).collect();
    if views.is_empty() {
        ctx.memory.lock().remove(&key(obj));
        ctx.looked.lock().remove(&key(obj));
        let note = "every gameserver drained and gone".to_owned();
        publish(ctx, &regarding, Kind::Normal, "Drained", "Delete", note).await;
        return Ok(Requeue::await_change());
    }
    let mut draining = 0;
    for v in &views {
        match v.phase {
            PodPhase::Draining => {}
            PodPhase::Exited { .. } => delete(&pods_api, &v.name, Some(0)).await?,
            PodPhase::Starting | PodPhase::Running => {
                delete(&pods_api, &v.name, None).await?;
                draining += 1;
            }
        }
    }
    if draining > 0 {
        let note = format!("the fleet is deleted: draining {draining} gameservers");
        publish(ctx, &regarding, Kind::Normal, "Draining", "Delete", note).await;
    }
    Err(Error::Draining(views.len()))
}
