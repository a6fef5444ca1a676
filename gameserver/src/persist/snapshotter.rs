//! The snapshot schedule: every world whose tick moved is saved to Redis every second and to
//! PostgreSQL every minute (by default), and every world to both on drain. A world a store
//! refuses (a newer placement holds it) is let go at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::host::{Host, Store};
use crate::metrics::Metrics;
use crate::server::until_true;

fn label(store: Store) -> &'static str {
    match store {
        Store::Hot => "redis",
        Store::Durable => "postgres",
    }
}

/// Save every world to `store`, retrying until `deadline`; true when all were saved.
pub async fn save_all(host: &Host, store: Store, deadline: tokio::time::Instant) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        if save_now(host, store, true).await.is_some() {
            return true;
        }
        if tokio::time::Instant::now() + backoff > deadline {
            return false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Save the worlds that changed (all of them with `all`) to `store`; how many were saved, or
/// `None` when the store failed.
pub async fn save_now(host: &Host, store: Store, all: bool) -> Option<usize> {
    let Some(persist) = host.persist() else { return Some(0) };
    let batch = host.worlds_to_save(store, all);
    if batch.is_empty() {
        return Some(0);
    }
    let result = match store {
        Store::Hot => persist.save_hot(&batch).await,
        Store::Durable => persist.save_durable(&batch).await,
    };
    match result {
        Ok(refused) => {
            let saved = batch.len() - refused.len();
            host.metrics().snapshots_written.get_or_create(&[("store", label(store))]).inc_by(saved as u64);
            host.saved(store, &batch, &refused);
            Some(saved)
        }
        Err(e) => {
            Metrics::count(&host.metrics().snapshot_errors, "store", label(store));
            tracing::warn!(store = label(store), error = %e, worlds = batch.len(), "snapshot write failed; will retry");
            None
        }
    }
}

/// Save to `store` every `every` until `stop`.
pub async fn run(host: Arc<Host>, store: Store, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => { save_now(&host, store, false).await; }
            () = until_true(&mut stop) => return,
        }
    }
}
