//! The fleet's HTTP API:
//!
//! | route | |
//! |---|---|
//! | `GET /v1/fleets` | the status: per region servers, load, last decision and why; recent events |
//! | `GET /v1/fleets/timeline` | every sample and event of the run |
//! | `GET /v1/fleets/spec` | the description in force (JSON) |
//! | `PUT /v1/fleets/spec` | replace it (JSON or YAML body, bearer key): applied at the next sync |
//! | `GET /healthz`, `/readyz`, `/metrics` | liveness; every region at its minimum of serving servers; Prometheus |
//!
//! The sync loop owns the controller; it publishes a snapshot of the status for this API and
//! takes new descriptions from it through a bounded channel.

use std::sync::Arc;
use std::time::Duration;

use arena_service::http::{json_error, read_body};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parking_lot::RwLock;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::spec::FleetSpec;
use crate::status::{FleetStatus, Timeline};

/// Largest description accepted.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

/// A new description and where to say whether it was taken.
pub type SpecChange = (FleetSpec, oneshot::Sender<Result<(), String>>);

/// What the API serves, published by the sync loop.
#[derive(Debug, Default)]
pub struct Published {
    pub status: FleetStatus,
    pub timeline: Timeline,
    pub spec: Option<FleetSpec>,
    pub ready: bool,
}

#[derive(Debug)]
pub struct ApiState {
    pub published: RwLock<Published>,
    pub metrics: Arc<Metrics>,
    pub changes: mpsc::Sender<SpecChange>,
    /// The bearer key `PUT` needs.
    pub key: String,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/fleets", get(status))
        .route("/v1/fleets/timeline", get(timeline))
        .route("/v1/fleets/spec", get(get_spec).put(put_spec))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
}

async fn status(State(s): State<Arc<ApiState>>) -> Response {
    axum::Json(s.published.read().status.clone()).into_response()
}

async fn timeline(State(s): State<Arc<ApiState>>) -> Response {
    axum::Json(s.published.read().timeline.clone()).into_response()
}

async fn get_spec(State(s): State<Arc<ApiState>>) -> Response {
    axum::Json(s.published.read().spec.clone()).into_response()
}

async fn readyz(State(s): State<Arc<ApiState>>) -> Response {
    if s.published.read().ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "regions below their minimum of serving servers\n").into_response()
    }
}

async fn metrics(State(s): State<Arc<ApiState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.render())
        .into_response()
}

async fn put_spec(State(s): State<Arc<ApiState>>, headers: HeaderMap, body: Body) -> Response {
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|k| bool::from(k.as_bytes().ct_eq(s.key.as_bytes()))) {
        return json_error(StatusCode::UNAUTHORIZED, "unauthorized", "send Authorization: Bearer <fleet key>");
    }
    let bytes = match read_body(&headers, body, MAX_SPEC_BYTES, Duration::from_secs(5)).await {
        Ok(b) => b,
        Err(e) => return e.refusal(),
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return json_error(StatusCode::BAD_REQUEST, "bad_request", "the description is not UTF-8");
    };
    let json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("json"));
    let spec = match FleetSpec::parse(text, if json { "body.json" } else { "body.yaml" }) {
        Ok(spec) => spec,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_request", &e.0),
    };
    let (tx, rx) = oneshot::channel();
    if s.changes.try_send((spec, tx)).is_err() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "a change is already waiting; retry shortly",
        );
    }
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(Ok(()))) => (StatusCode::OK, axum::Json(serde_json::json!({"applied": true}))).into_response(),
        Ok(Ok(Err(why))) => json_error(StatusCode::CONFLICT, "conflict", &why),
        _ => json_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the fleet did not take the change in time"),
    }
}
