//! `arena-fleet operator`: the fleet on Kubernetes. One `ArenaFleet` resource per region; the
//! operator owns each fleet's gameserver pods and sizes, heals and updates them with the same
//! policies and reconciler as the local fleet. Of its replicas, the one holding the Lease acts.
//!
//! - [`pods`]: the pod of a server, and what a pod says — pure;
//! - [`plan`]: one sync of one fleet, decided — pure;
//! - [`events`]: Kubernetes Events about a fleet;
//! - [`lease`]: leader election — the deciding pure, the Lease I/O thin;
//! - [`reconciler`]: carries a plan out through the API, the drain finalizer, Events, status.

pub mod events;
pub mod lease;
pub mod plan;
pub mod pods;
pub mod reconciler;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};

use crate::allocator::AllocatorLink;
use crate::crd::ArenaFleet;
use crate::metrics::Metrics;
use events::Events;
use lease::{Elector, LeaseLock};
use pods::{MANAGED_BY, MANAGED_BY_LABEL};
use reconciler::{Ctx, error_policy, reconcile};

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    pub namespace: String,
    /// This replica's name in the election (its pod's name).
    pub identity: String,
    pub allocators: Vec<String>,
    pub api_key: String,
    pub server_key: Option<String>,
    /// A file holding the gameserver `PodTemplateSpec` (YAML or JSON).
    pub pod_template: PathBuf,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub listen: SocketAddr,
    pub sync: Duration,
}

/// Read the gameserver pod template.
pub fn read_template(path: &std::path::Path) -> anyhow::Result<PodTemplateSpec> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let t: PodTemplateSpec =
        yaml_serde::from_str(&text).with_context(|| format!("{}: not a PodTemplateSpec", path.display()))?;
    let has = t.spec.as_ref().is_some_and(|s| s.containers.iter().any(|c| c.name == pods::CONTAINER));
    anyhow::ensure!(has, "{}: needs a container named {:?}", path.display(), pods::CONTAINER);
    Ok(t)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

struct Health {
    metrics: Arc<Metrics>,
    /// The Kubernetes API answered the last election round.
    api_ok: AtomicBool,
}

/// Run until SIGTERM, or until this replica loses the lease it held (it exits then, to be
/// restarted clean as a follower: never two replicas acting at once).
pub async fn run(cfg: OperatorConfig) -> anyhow::Result<()> {
    let template = read_template(&cfg.pod_template)?;
    let client = Client::try_default().await.context("no Kubernetes API (in-cluster config or kubeconfig)")?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health { metrics: Arc::clone(&metrics), api_ok: AtomicBool::new(false) });
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("listen on {}", cfg.listen))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Arc::clone(&health));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the operator's HTTP server stopped");
        }
    });

    let lock =
        LeaseLock { api: Api::<Lease>::namespaced(client.clone(), &cfg.namespace), name: cfg.lease_name.clone() };
    let mut elector = Elector::new(cfg.identity.clone(), cfg.lease_duration);
    let retry = cfg.lease_duration / 5;
    let mut controller: Option<tokio::task::JoinHandle<()>> = None;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let was = controller.is_some();
        match tokio::time::timeout(retry, lock.round(&mut elector, now_ms())).await {
            Ok(Ok(_)) => health.api_ok.store(true, Ordering::Relaxed),
            Ok(Err(e)) => {
                health.api_ok.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "leader election: the Lease cannot be read or written");
            }
            Err(_) => {
                health.api_ok.store(false, Ordering::Relaxed);
                elector.lost();
                tracing::warn!("leader election: the API did not answer in time");
            }
        }
        let leading = elector.leading(now_ms());
        metrics.leader.set(i64::from(leading));
        if leading && !was {
            tracing::info!(identity = cfg.identity, lease = cfg.lease_name, "leading: reconciling fleets");
            let ctx = Arc::new(Ctx::new(
                client.clone(),
                AllocatorLink::new(cfg.allocators.clone(), cfg.api_key.clone(), cfg.server_key.clone()),
                template.clone(),
                Events { client: client.clone(), controller: "arena-fleet".into(), instance: cfg.identity.clone() },
                Arc::clone(&metrics),
                cfg.sync,
                now_ms,
            ));
            // Fleets are watched untyped: one the operator cannot read fails its own
            // reconciliation (an InvalidSpec event), not the watch of them all.
            let resource = ApiResource::erase::<ArenaFleet>(&());
            let fleets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &cfg.namespace, &resource);
            let pods: Api<Pod> = Api::namespaced(client.clone(), &cfg.namespace);
            let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
            let errors = Arc::clone(&metrics);
            controller = Some(tokio::spawn(
                Controller::new_with(fleets, watcher::Config::default(), resource)
                    .owns(pods, owned)
                    .run(reconcile, error_policy, ctx)
                    .for_each(move |r| {
                        let errors = Arc::clone(&errors);
                        async move {
                            // Reconciliation errors are logged and counted by error_policy; these
                            // are the watches' and the queue's.
                            if let Err(e) = r
                                && !matches!(e, kube::runtime::controller::Error::ReconcilerFailed(..))
                            {
                                tracing::warn!(error = %e, "controller");
                                errors.reconcile_errors.inc();
                            }
                        }
                    }),
            ));
        } else if !leading && was {
            metrics.leader.set(0);
            anyhow::bail!("lost the lease {}: stopping so that one replica acts at a time", cfg.lease_name);
        }
        if controller.as_ref().is_some_and(|c| c.is_finished()) {
            metrics.leader.set(0);
            let _ = lock.release(&mut elector).await;
            anyhow::bail!("the controller stopped: giving the lease up");
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping");
                if let Some(c) = controller.take() {
                    c.abort();
                    // The next replica takes over at once, not after a lease duration.
                    match tokio::time::timeout(retry, lock.release(&mut elector)).await {
                        Ok(Ok(true)) => tracing::info!(lease = cfg.lease_name, "lease released"),
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "could not release the lease"),
                        Err(_) => tracing::warn!("could not release the lease in time"),
                    }
                }
                return Ok(());
            }
        }
    }
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    if h.api_ok.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the Kubernetes API does not answer")
    }
}

async fn metrics_text(State(h): State<Arc<Health>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], h.metrics.render())
}
