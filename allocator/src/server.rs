//! Wiring: the HTTP listener, the index refresher, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

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
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<std::io::Result<()>> {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let refresher = {
        let app = Arc::clone(&app);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut since_purge = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if let Err(e) = app.allocator.refresh().await {
                    app.allocator.metrics().registry_errors.inc();
                    tracing::warn!(error = %e, "index refresh failed");
                }
                since_purge += REFRESH_EVERY;
                if since_purge >= Duration::from_secs(10) {
                    since_purge = Duration::ZERO;
                    let before = crate::unix_ms().saturating_sub(PURGE_AFTER.as_millis() as u64);
                    if let Err(e) = app.allocator.registry().purge(before).await {
                        tracing::warn!(error = %e, "purge failed");
                    }
                }
            }
        })
    };
    let service = router(app).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let graceful = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        let served = axum::serve(listener, service).with_graceful_shutdown(graceful).await;
        let _ = stop_rx.wait_for(|s| *s).await;
        let _ = refresher.await;
        served
    })
}
