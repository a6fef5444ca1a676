//! The HTTP API (`docs/allocator-api.md`). Every refusal is a JSON body
//! `{"error": {"code", "message", "field"?}}`; nothing a caller sends can do more than earn one.
//! The caller's key is checked before its body is read; bodies are read with a size limit and a
//! deadline, and at most a few large (heartbeat) bodies are read at once, so memory stays bounded
//! whatever arrives. The connection-level limits are `arena_service::http`'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arena_sdk::allocator_api::{AllocationRequest, ApiError, ApiErrorBody, Heartbeat, RegionSummary, ServerSummary};
use arena_service::http::{BodyError, read_body};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::auth::{Keys, Role};
use crate::metrics::Metrics;
use crate::ratelimit::Limiter;
use crate::registry::Registry;
use crate::service::{AllocError, Allocator};

/// Largest allocation request body.
pub const MAX_ALLOCATION_BODY: usize = 16 * 1024;
/// Largest heartbeat body.
pub const MAX_HEARTBEAT_BODY: usize = 2 * 1024 * 1024;
/// Heartbeat bodies read at once (each up to [`MAX_HEARTBEAT_BODY`]).
pub const HEARTBEAT_BODIES_AT_ONCE: usize = 16;
/// Time allowed for a request body to arrive.
pub const BODY_DEADLINE: Duration = Duration::from_secs(5);

pub struct App<R> {
    pub allocator: Allocator<R>,
    pub keys: Keys,
    pub limiter: Limiter,
    /// Permits to read a heartbeat body.
    pub heartbeat_bodies: Semaphore,
    /// Ready while the registry answered within this long.
    pub ready_within: Duration,
}

impl<R: Registry> App<R> {
    pub fn new(allocator: Allocator<R>, keys: Keys, limiter: Limiter) -> Self {
        let ready_within = allocator.rules().stale_after;
        App { allocator, keys, limiter, heartbeat_bodies: Semaphore::new(HEARTBEAT_BODIES_AT_ONCE), ready_within }
    }
}

impl<R> std::fmt::Debug for App<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// A refusal, rendered as the JSON error body.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    retry_after: Option<Duration>,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Refusal { status, code, message: message.into(), field: None, retry_after: None }
    }

    fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    fn retry(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

impl From<BodyError> for Refusal {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge(_) => Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.to_string()),
            BodyError::Timeout(_) => Refusal::new(StatusCode::REQUEST_TIMEOUT, "timeout", e.to_string()),
            BodyError::Read(_) => Refusal::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body =
            ApiError { error: ApiErrorBody { code: self.code.into(), message: self.message, field: self.field } };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<AllocError> for Refusal {
    fn from(e: AllocError) -> Self {
        match e {
            AllocError::BadRequest(f) => Refusal::new(StatusCode::BAD_REQUEST, "bad_request", f.message).field(f.field),
            AllocError::NoCapacity => {
                Refusal::new(StatusCode::TOO_MANY_REQUESTS, "no_capacity", e.to_string()).retry(Duration::from_secs(1))
            }
            AllocError::WorldFull | AllocError::WorldMoving | AllocError::WorldBusy => {
                Refusal::new(StatusCode::TOO_MANY_REQUESTS, "world_unavailable", e.to_string())
                    .retry(Duration::from_secs(1))
            }
            AllocError::SeatElsewhere(_) => Refusal::new(StatusCode::CONFLICT, "seat_elsewhere", e.to_string()),
            AllocError::Registry(err) => {
                tracing::warn!(error = %err, "registry failed");
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "registry unavailable; retry shortly")
                    .retry(Duration::from_secs(1))
            }
            AllocError::Stale(_) | AllocError::WarmingUp | AllocError::Unheard => {
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
                    .retry(Duration::from_secs(1))
            }
            AllocError::Ticket(msg) => Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg),
        }
    }
}

fn result_label(r: &Refusal) -> &'static str {
    r.code
}

/// Limits, then authentication: the per-address limit comes first so guessing keys costs too.
fn admit<R>(app: &App<R>, addr: SocketAddr, headers: &HeaderMap, roles: &[Role]) -> Result<(), Refusal> {
    app.limiter.check_ip(addr.ip()).map_err(|after| {
        Refusal::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests from this address").retry(after)
    })?;
    let Some(token) = Keys::bearer(headers) else {
        return Err(Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", "send Authorization: Bearer <api key>"));
    };
    if !app.keys.allows(token, roles) {
        return Err(Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown API key"));
    }
    app.limiter.check_key(token).map_err(|after| {
        Refusal::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests for this API key").retry(after)
    })
}

/// Parse a JSON body, naming the field that is wrong (the whole body when the JSON itself is
/// broken: truncated, or not JSON at all).
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Refusal> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let syntax = e.inner().is_syntax() || e.inner().is_eof();
        let message: String = e.inner().to_string().chars().take(200).collect();
        let refusal = Refusal::new(StatusCode::BAD_REQUEST, "bad_request", message);
        if path == "." || path == "?" || syntax { refusal } else { refusal.field(path) }
    })
}

async fn allocate<R: Registry>(
    State(app): State<Arc<App<R>>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let metrics = app.allocator.metrics();
    let result = async {
        admit(&app, addr, &headers, &[Role::Client])?;
        let bytes = read_body(&headers, body, MAX_ALLOCATION_BODY, BODY_DEADLINE).await?;
        let req: AllocationRequest = parse(&bytes)?;
        Ok::<_, Refusal>(app.allocator.allocate(&req).await?)
    }
    .await;
    metrics.allocation_duration.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(allocation) => {
            Metrics::count(&metrics.allocations, "result", "ok");
            axum::Json(allocation).into_response()
        }
        Err(refusal) => {
            Metrics::count(&metrics.allocations, "result", result_label(&refusal));
            refusal.into_response()
        }
    }
}

async fn release<R: Registry>(
    State(app): State<Arc<App<R>>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        admit(&app, addr, &headers, &[Role::Client])?;
        let Path(id) =
            id.map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()).field("id"))?;
        if id.len() > 200 {
            return Err(Refusal::new(StatusCode::BAD_REQUEST, "bad_request", "allocation id too long").field("id"));
        }
        Ok(app.allocator.release(&id).await?)
    }
    .await;
    match result {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => {
            Refusal::new(StatusCode::NOT_FOUND, "not_found", "no such reservation (used or expired)").into_response()
        }
        Err(r) => r.into_response(),
    }
}

async fn heartbeat<R: Registry>(
    State(app): State<Arc<App<R>>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        admit(&app, addr, &headers, &[Role::Server])?;
        let token = Keys::bearer(&headers).unwrap_or_default().to_owned();
        let bytes = {
            let _permit = app.heartbeat_bodies.acquire().await.map_err(|_| {
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "shutting down")
                    .retry(Duration::from_secs(1))
            })?;
            read_body(&headers, body, MAX_HEARTBEAT_BODY, BODY_DEADLINE).await?
        };
        let hb: Heartbeat = parse(&bytes)?;
        drop(bytes);
        if !app.keys.may_report(&token, &hb.server_id) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this server key may not report for server {:?}", hb.server_id),
            )
            .field("server_id"));
        }
        Ok::<_, Refusal>(app.allocator.heartbeat(&hb).await?)
    }
    .await;
    match result {
        Ok(reply) => axum::Json(reply).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn regions<R: Registry>(
    State(app): State<Arc<App<R>>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&app, addr, &headers, &[Role::Client, Role::Server]) {
        return r.into_response();
    }
    let summary: Vec<RegionSummary> = app.allocator.with_index(|ix, l| {
        ix.regions()
            .map(|region| {
                let servers: Vec<_> = ix.servers_in(region).collect();
                let ready: Vec<_> = servers.iter().filter(|s| s.view.ready(l)).collect();
                let seats: u64 =
                    ready.iter().map(|s| u64::from(s.view.max_worlds) * u64::from(s.view.world_capacity)).sum();
                let used: u64 = ready.iter().map(|s| u64::from(s.bots)).sum();
                RegionSummary {
                    region: region.to_owned(),
                    servers_ready: ready.len(),
                    servers: servers.len(),
                    worlds: servers.iter().map(|s| u64::from(s.worlds)).sum(),
                    world_capacity: ready.iter().map(|s| u64::from(s.view.max_worlds)).sum(),
                    seats_used: used,
                    seats,
                    room: ready.iter().filter(|s| s.takes_new_bots(l)).map(|s| s.free_seats()).sum(),
                    utilisation: if seats == 0 { 0.0 } else { used as f64 / seats as f64 },
                }
            })
            .collect()
    });
    axum::Json(summary).into_response()
}

async fn servers<R: Registry>(
    State(app): State<Arc<App<R>>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&app, addr, &headers, &[Role::Client, Role::Server]) {
        return r.into_response();
    }
    let mut list: Vec<ServerSummary> = app.allocator.with_index(|ix, l| {
        ix.servers()
            .map(|s| ServerSummary {
                server_id: s.view.id.clone(),
                region: s.view.region.clone(),
                ws: s.view.ws.clone(),
                quic: s.view.quic.clone(),
                state: s.view.state,
                alive: s.view.alive(l),
                last_seen_ms_ago: l.now_ms.saturating_sub(s.view.last_seen_ms),
                worlds: s.worlds,
                max_worlds: s.view.max_worlds,
                world_capacity: s.view.world_capacity,
                seats_used: s.bots,
                load: s.view.load,
                version: s.view.version.clone(),
            })
            .collect()
    });
    list.sort_by(|a, b| a.server_id.cmp(&b.server_id));
    axum::Json(list).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready while this replica's view of the registry is fresh: answered at once from what the
/// background refresh last saw, never by waiting on the registry.
async fn readyz<R: Registry>(State(app): State<Arc<App<R>>>) -> Response {
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    match app.allocator.index_age() {
        Some(age) if age <= app.ready_within => (StatusCode::OK, text, "ready\n").into_response(),
        Some(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            format!("registry unavailable: no answer for {} ms\n", age.as_millis()),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, text, "registry not reached yet\n").into_response(),
    }
}

async fn metrics<R: Registry>(State(app): State<Arc<App<R>>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        app.allocator.metrics().render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    Refusal::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint").into_response()
}

async fn method_not_allowed() -> Response {
    Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
        .into_response()
}

pub fn router<R: Registry>(app: Arc<App<R>>) -> Router {
    Router::new()
        .route("/v1/allocations", post(allocate::<R>))
        .route("/v1/allocations/{id}", delete(release::<R>))
        .route("/v1/servers/heartbeat", post(heartbeat::<R>))
        .route("/v1/regions", get(regions::<R>))
        .route("/v1/servers", get(servers::<R>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<R>))
        .route("/metrics", get(metrics::<R>))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}
