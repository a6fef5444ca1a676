//! The HTTP side port: `/healthz`, `/readyz`, `/metrics` (and, with `--enable-fault-injection`,
//! `POST /debug/panic-shard`), served by [`arena_service::http`]: a cap on connections, head and
//! body deadlines, JSON refusals.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use arena_service::http::json_error;

use crate::host::Host;

pub fn router(host: Arc<Host>) -> Router {
    let mut r =
        Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics));
    if host.config().fault_injection {
        r = r.route("/debug/panic-shard", post(panic_shard));
    }
    r.fallback(not_found).method_not_allowed_fallback(method_not_allowed).with_state(host)
}

/// Alive: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready to take players: 200 only while Ready, no task failed, and (with an allocator) the lease
/// holds. The body says which.
async fn readyz(State(host): State<Arc<Host>>) -> Response {
    let state = host.lifecycle();
    let why = if let Some(failure) = host.supervisor().failure() {
        format!("failed: {failure}")
    } else if !host.lease_valid() {
        "no lease: not in contact with the allocator".to_owned()
    } else {
        state.as_str().to_owned()
    };
    let status = if host.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{why}\n")).into_response()
}

async fn metrics(State(host): State<Arc<Host>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], host.metrics().render())
}

#[derive(Debug, Deserialize)]
struct ShardQuery {
    shard: usize,
}

/// Make a shard panic at its next tick (to test supervision).
async fn panic_shard(State(host): State<Arc<Host>>, Query(q): Query<ShardQuery>) -> Response {
    host.faults().panic_shard.store(q.shard, Ordering::Relaxed);
    (StatusCode::ACCEPTED, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "armed\n").into_response()
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> Response {
    json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
}
