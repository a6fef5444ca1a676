//! The snapshot schedule: every world whose tick moved is saved to Redis every second and to
//! PostgreSQL every minute (by default), and every world to both on drain. Each write carries
//! the world's fence; a world a store refuses (a newer placement holds it) is let go at once.

use std::sync::Arc;
use std::time::Duration;

use arena_sdk::protocol::close;
use tokio_util::sync::CancellationToken;

use crate::host::Host;
use crate::metrics::Metrics;
use crate::persist::snapshots::Encoded;

/// Where a snapshot goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Redis, every second.
    Hot,
    /// PostgreSQL, periodically and on drain.
    Durable,
}

impl Store {
    pub fn label(self) -> &'static str {
        match self {
            Store::Hot => "redis",
            Store::Durable => "postgres",
        }
    }
}

/// Encode the worlds to save: those whose tick moved since their last save to `store` (every
/// loaded world when `all`).
pub fn worlds_to_save(host: &Host, store: Store, all: bool) -> Vec<Encoded> {
    let cells = host.worlds().cells();
    let mut out = Vec::with_capacity(cells.len());
    for cell in cells {
        let (saved, fence) = {
            let st = cell.state.lock();
            let last = match store {
                Store::Hot => st.saved_hot,
                Store::Durable => st.saved_durable,
            };
            if st.closed || !st.loaded || (!all && st.room.tick() == last) {
                continue;
            }
            (st.room.save(), st.fence)
        };
        match Encoded::new(cell.world_id(), fence, &saved) {
            Ok(e) => out.push(e),
            Err(error) => tracing::error!(world = %cell.world_id(), %error, "could not encode a snapshot"),
        }
    }
    out
}

/// Note what a store accepted; let go of worlds it refused (a newer placement holds them).
pub fn saved(host: &Host, store: Store, batch: &[Encoded], refused: &[String]) {
    for e in batch {
        if refused.contains(&e.world) {
            continue;
        }
        if let Some(cell) = host.worlds().get(&e.world) {
            let mut st = cell.state.lock();
            match store {
                Store::Hot => st.saved_hot = st.saved_hot.max(e.tick),
                Store::Durable => st.saved_durable = st.saved_durable.max(e.tick),
            }
        }
    }
    for world in refused {
        host.metrics().snapshots_refused.inc();
        // Only the copy that was refused: the world may have been placed here again since,
        // with a newer fence.
        let written_with = batch.iter().filter(|e| e.world == *world).map(|e| e.fence).max().unwrap_or(0);
        if host.worlds().get(world).is_some_and(|c| c.state.lock().fence <= written_with) {
            host.evict(world, close::WORLD_MOVED, "a newer placement of the world exists");
        }
    }
}

/// Save the worlds that changed (all of them with `all`) to `store`; how many were saved, or
/// `None` when the store failed.
pub async fn save_now(host: &Host, store: Store, all: bool) -> Option<usize> {
    let persist = host.persist()?;
    let batch = worlds_to_save(host, store, all);
    if batch.is_empty() {
        return Some(0);
    }
    let result = match store {
        Store::Hot => persist.save_hot(&batch).await,
        Store::Durable => persist.save_durable(&batch).await,
    };
    match result {
        Ok(refused) => {
            let n = batch.len() - refused.len();
            host.metrics().snapshots_written.get_or_create(&[("store", store.label())]).inc_by(n as u64);
            saved(host, store, &batch, &refused);
            Some(n)
        }
        Err(e) => {
            Metrics::count(&host.metrics().snapshot_errors, "store", store.label());
            tracing::warn!(store = store.label(), error = %e, worlds = batch.len(), "snapshot write failed; will retry");
            None
        }
    }
}

/// Save every world to `store`, retrying with backoff until `deadline`; true when all were saved.
pub async fn save_all(host: &Host, store: Store, deadline: tokio::time::Instant) -> bool {
    use backon::BackoffBuilder;
    let mut delays = backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .without_max_times()
        .build();
    loop {
        if save_now(host, store, true).await.is_some() {
            return true;
        }
        let wait = delays.next().unwrap_or(Duration::from_secs(2));
        if tokio::time::Instant::now() + wait > deadline {
            return false;
        }
        tokio::time::sleep(wait).await;
    }
}

/// Save to `store` every `every` until `stop`.
pub async fn run(host: Arc<Host>, store: Store, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => { save_now(&host, store, false).await; }
            () = stop.cancelled() => return,
        }
    }
}
