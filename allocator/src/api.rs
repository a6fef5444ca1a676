//! The HTTP API (`docs/allocator-api.md`). Every refusal is a JSON body
//! `{"error": {"code", "message", "field"?}}`; nothing a caller sends can do more than earn one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arena_sdk::allocator_api::{AllocationRequest, ApiError, ApiErrorBody, Heartbeat, ServerState};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::{Keys, Role};
use crate::metrics::Metrics;
use crate::policy::Clock;
use crate::ratelimit::Limiter;
use crate::registry::Registry;
use crate::service::{AllocError, Allocator};
use crate::unix_ms;

/// Largest allocation request body.
pub const MAX_ALLOCATION_BODY: usize = 16 * 1024;
/// Largest heartbeat body.
pub const MAX_HEARTBEAT_BODY: usize = 2 * 1024 * 1024;

pub struct App<R> {
    pub allocator: Allocator<R>,
    pub keys: Keys,
    pub limiter: Limiter,
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
            AllocError::WorldFull | AllocError::WorldMoving => {
                Refusal::new(StatusCode::TOO_MANY_REQUESTS, "world_unavailable", e.to_string())
                    .retry(Duration::from_secs(1))
            }
            AllocError::Registry(err) => {
                tracing::error!(error = %err, "registry failed");
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "registry unavailable; retry shortly")
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

/// Parse a JSON body, naming the field that is wrong.
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, Refusal> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body too large")
        } else {
            Refusal::new(StatusCode::BAD_REQUEST, "bad_request", rejection.body_text())
        }
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message: String = e.inner().to_string().chars().take(200).collect();
        let refusal = Refusal::new(StatusCode::BAD_REQUEST, "bad_request", message);
        if path == "." { refusal } else { refusal.field(path) }
    })
}

async fn allocate<R: Registry>(
    State(app): State<Arc<App<R>>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let metrics = app.allocator.metrics();
    let result = async {
        admit(&app, addr, &headers, &[Role::Client])?;
        let req: AllocationRequest = parse(body)?;
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
    Path(id): Path<String>,
) -> Response {
    let result = async {
        admit(&app, addr, &headers, &[Role::Client])?;
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
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        admit(&app, addr, &headers, &[Role::Server])?;
        let hb: Heartbeat = parse(body)?;
        Ok::<_, Refusal>(app.allocator.heartbeat(&hb).await?)
    }
    .await;
    match result {
        Ok(reply) => axum::Json(reply).into_response(),
        Err(r) => r.into_response(),
    }
}

#[derive(Debug, Serialize)]
struct RegionSummary {
    region: String,
    servers_ready: usize,
    servers: usize,
    worlds: u64,
    /// Worlds ready servers may hold.
    world_capacity: u64,
    seats_used: u64,
    /// Seats of ready servers.
    seats: u64,
    utilisation: f64,
}

#[derive(Debug, Serialize)]
struct ServerSummary {
    server_id: String,
    region: String,
    ws: String,
    state: ServerState,
    alive: bool,
    last_seen_ms_ago: u64,
    worlds: u32,
    max_worlds: u32,
    world_capacity: u32,
    seats_used: u32,
}

fn clock<R: Registry>(app: &App<R>) -> Clock {
    Clock { now_ms: unix_ms(), server_timeout_ms: app.allocator.rules().server_timeout.as_millis() as u64 }
}

async fn regions<R: Registry>(
    State(app): State<Arc<App<R>>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&app, addr, &headers, &[Role::Client, Role::Server]) {
        return r.into_response();
    }
    let clock = clock(&app);
    let summary: Vec<RegionSummary> = app.allocator.with_index(|ix| {
        ix.regions()
            .map(|region| {
                let servers: Vec<_> = ix.servers_in(region).collect();
                let ready: Vec<_> =
                    servers.iter().filter(|s| s.view.ready(clock.now_ms, clock.server_timeout_ms)).collect();
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
    let clock = clock(&app);
    let mut list: Vec<ServerSummary> = app.allocator.with_index(|ix| {
        ix.servers()
            .map(|s| ServerSummary {
                server_id: s.view.id.clone(),
                region: s.view.region.clone(),
                ws: s.view.ws.clone(),
                state: s.view.state,
                alive: s.view.alive(clock.now_ms, clock.server_timeout_ms),
                last_seen_ms_ago: clock.now_ms.saturating_sub(s.view.last_seen_ms),
                worlds: s.worlds,
                max_worlds: s.view.max_worlds,
                world_capacity: s.view.world_capacity,
                seats_used: s.bots,
            })
            .collect()
    });
    list.sort_by(|a, b| a.server_id.cmp(&b.server_id));
    axum::Json(list).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz<R: Registry>(State(app): State<Arc<App<R>>>) -> Response {
    match app.allocator.registry().ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            app.allocator.metrics().registry_errors.inc();
            (StatusCode::SERVICE_UNAVAILABLE, format!("registry unavailable: {e}\n")).into_response()
        }
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

pub fn router<R: Registry>(app: Arc<App<R>>) -> Router {
    Router::new()
        .route("/v1/allocations", post(allocate::<R>).layer(DefaultBodyLimit::max(MAX_ALLOCATION_BODY)))
        .route("/v1/allocations/{id}", delete(release::<R>))
        .route("/v1/servers/heartbeat", post(heartbeat::<R>).layer(DefaultBodyLimit::max(MAX_HEARTBEAT_BODY)))
        .route("/v1/regions", get(regions::<R>))
        .route("/v1/servers", get(servers::<R>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<R>))
        .route("/metrics", get(metrics::<R>))
        .fallback(not_found)
        .with_state(app)
}
