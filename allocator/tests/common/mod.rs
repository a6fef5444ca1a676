//! Allocators served from this process (with a registry the test holds), on a free port; the
//! process-level harness is `arena-testkit`'s.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use arena_allocator::api::App;
use arena_allocator::auth::Keys;
use arena_allocator::metrics::Metrics;
use arena_allocator::ratelimit::{LimitConfig, Limiter};
use arena_allocator::registry::Registry;
use arena_allocator::service::{AllocationRules, Allocator};
use arena_sdk::ticket::TicketKey;
use arena_service::http::HttpLimits;
use serde_json::Value;

#[allow(unused_imports)]
pub use arena_testkit::DEV_KEY as KEY;

pub const WAIT: Duration = Duration::from_secs(15);

/// An allocator served from this process.
pub struct LocalAllocator {
    pub base: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl LocalAllocator {
    pub async fn start<R: Registry>(registry: R, rules: AllocationRules, limits: LimitConfig) -> Self {
        Self::start_with(registry, rules, limits, HttpLimits::default(), Keys::development()).await
    }

    pub async fn start_with<R: Registry>(
        registry: R,
        rules: AllocationRules,
        limits: LimitConfig,
        http: HttpLimits,
        keys: Keys,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let allocator = Allocator::new(registry, rules, TicketKey::development(), Arc::new(Metrics::new()));
        let app = Arc::new(App::new(allocator, keys, Limiter::new(limits)));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        arena_allocator::server::spawn(listener, app, http, async move {
            let _ = rx.await;
        });
        LocalAllocator { base: format!("http://{addr}"), shutdown: Some(tx) }
    }
}

impl Drop for LocalAllocator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// POST /v1/allocations; the status and the JSON body.
pub async fn allocate(client: &reqwest::Client, base: &str, body: Value) -> (u16, Value) {
    arena_testkit::http::post(client, &format!("{base}/v1/allocations"), &body).await
}

pub async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    arena_testkit::http::get(client, url).await.1
}

/// Wait until `pred` holds for `GET url`.
pub async fn wait_json(client: &reqwest::Client, url: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    arena_testkit::http::eventually(what, WAIT, || async {
        let v = get_json(client, url).await;
        pred(&v).then_some(v)
    })
    .await
}
