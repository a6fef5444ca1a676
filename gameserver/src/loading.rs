//! Loading a world's saved state before its first bot takes a seat: claim the world in
//! PostgreSQL with the placement's fence (refused when a newer placement holds it), then restore
//! the newest snapshot from either store. Loading happens once per world; joins that arrive
//! meanwhile wait for it.

use std::sync::Arc;

use arena_sdk::protocol::{ErrorCode, ErrorMsg};

use crate::link::Link;
use crate::metrics::Metrics;
use crate::persist::Persist;
use crate::worlds::{RoomCell, Worlds};

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorMsg {
    ErrorMsg { code, message: message.into() }
}

/// Load the world's saved state once (nothing to load without persistence); a failure forgets
/// the cell, so the next join tries again.
pub async fn ensure_loaded<L: Link>(
    persist: Option<&Persist>,
    worlds: &Worlds<L>,
    metrics: &Metrics,
    cell: &Arc<RoomCell<L>>,
    fence: u64,
) -> Result<(), ErrorMsg> {
    let Some(persist) = persist else { return Ok(()) };
    let result = cell.loader.get_or_init(|| load_world(persist, worlds, metrics, cell, fence)).await;
    if let Err(e) = result {
        cell.state.lock().closed = true;
        worlds.remove(cell);
        metrics.live_worlds.set(worlds.len() as i64);
        return Err(e.clone());
    }
    Ok(())
}

async fn load_world<L: Link>(
    persist: &Persist,
    worlds: &Worlds<L>,
    metrics: &Metrics,
    cell: &Arc<RoomCell<L>>,
    fence: u64,
) -> Result<(), ErrorMsg> {
    let world = cell.world_id().as_ref();
    let unavailable = |e: String| {
        tracing::error!(world, error = %e, "cannot load the world's saved state");
        err(ErrorCode::Unavailable, "the world's saved state cannot be loaded right now; retry shortly")
    };
    let owned = persist.claim(world, fence).await.map_err(|e| unavailable(e.to_string()))?;
    if !owned {
        return Err(err(ErrorCode::TicketWrongServer, "the world was placed on another server; allocate again"));
    }
    let saved = persist.load(world).await.map_err(|e| unavailable(e.to_string()))?;
    let saved_fence = saved.as_ref().map_or(0, |(f, _)| *f);
    // A placement older than the newest snapshot is stale. Without an allocator (fence 0) the
    // server takes the snapshot's fence and carries on from it.
    if fence != 0 && saved_fence > fence {
        return Err(err(ErrorCode::TicketWrongServer, "the world was placed on another server; allocate again"));
    }
    let mut st = cell.state.lock();
    st.fence = st.fence.max(saved_fence);
    if let Some((_, saved)) = saved {
        let tick = saved.world.tick();
        tracing::info!(world, tick, bots = saved.seats.len(), "world restored from its snapshot");
        worlds.restore(&mut st, world, saved);
    }
    st.fence = st.fence.max(fence);
    st.loaded = true;
    metrics.live_worlds.set(worlds.len() as i64);
    Ok(())
}
