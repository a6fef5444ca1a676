//! Wiring: the HTTP listener (`arena_service::http`: connection cap, head and body deadlines),
//! the index refresher (which is also what readiness is judged on), purging, and graceful
//! shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arena_service::http::HttpLimits;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{App, router};
use crate::registry::Registry;

/// How often each replica rebuilds its index from the registry.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);
/// Servers silent for this long are forgotten.
pub const PURGE_AFTER: Duration = Duration::from_secs(300);

/// Serve `app` on `listener` until `shutdown` resolves.
pub fn spawn<R: Registry>(
    listener: TcpListener,
    app: Arc<App<R>>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<std::io::Result<()>> {
    let stop = CancellationToken::new();
    let refresher = tokio::spawn(refresh_loop(Arc::clone(&app), stop.clone()));
    let open = Some(app.allocator.metrics().http_connections.clone());
    let service = router(app);
    tokio::spawn(async move {
        let stopper = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopper.cancel();
        });
        let served = arena_service::http::serve(listener, service, limits, stop.clone(), open).await;
        stop.cancel();
        let _ = refresher.await;
        served
    })
}

/// Rebuild the index four times a second (each read under the registry deadline); purge silent
/// servers every ten seconds.
async fn refresh_loop<R: Registry>(app: Arc<App<R>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since_purge = Duration::ZERO;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        match app.allocator.refresh().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("the registry answers again");
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "index refresh failed");
                }
                failing = true;
            }
        }
        let age = app.allocator.index_age().map_or(f64::INFINITY, |a| a.as_secs_f64());
        app.allocator.metrics().index_age_seconds.set(age);
        since_purge += REFRESH_EVERY;
        if since_purge >= Duration::from_secs(10) && !failing {
            since_purge = Duration::ZERO;
            let registry = app.allocator.registry();
            let limit = app.allocator.rules().registry_timeout;
            match tokio::time::timeout(limit, registry.purge(PURGE_AFTER.as_millis() as u64)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "purge failed"),
                Err(_) => tracing::warn!("purge timed out"),
            }
        }
    }
}
