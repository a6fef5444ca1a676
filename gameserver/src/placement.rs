//! What the allocator placed on this server, and what the server tells it back.
//!
//! A world may be loaded here only if its placement on this server is known: it is live here
//! already, the allocator's last answer listed it as placed here (with the ticket's fence), or
//! the ticket's fence is newer than anything that answer knew (placed since). A ticket for an
//! older placement — the world moved while this server was cut off — is refused, so a server
//! never starts serving a world that lives elsewhere now.
//!
//! The report side: every heartbeat carries, per world, the joins and refused tickets not yet
//! acknowledged and — when seats changed, or every [`BOTS_REFRESH`] — the bots holding seats.
//! Nothing is forgotten until the heartbeat that carried it is acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arena_sdk::allocator_api::{HeartbeatReply, WorldReport};
use arena_sdk::protocol::{ErrorCode, ErrorMsg};

use crate::link::Link;
use crate::worlds::{RoomCell, Worlds};

/// How often each world's bot list is sent even if it did not change.
pub const BOTS_REFRESH: Duration = Duration::from_secs(10);

/// The allocator's last word about this server.
#[derive(Debug, Clone, Default)]
pub struct PlacementView {
    standalone: bool,
    /// Worlds placed here that were not loaded, with their fences.
    placed: HashMap<String, u64>,
    /// The registry's newest fence at its last answer.
    watermark: u64,
}

impl PlacementView {
    pub fn new(standalone: bool) -> Self {
        PlacementView { standalone, ..PlacementView::default() }
    }

    /// Whether `world` may be loaded (or joined) here with a ticket carrying `fence`; `live` is
    /// the fence of the world if it is loaded here already.
    pub fn may_load(&self, world: &str, fence: Option<u64>, live: Option<u64>) -> Result<(), ErrorMsg> {
        // Without an allocator, or for tickets made by hand (no fence), there is nothing to check
        // against: the allocator adopts such a world when it is reported.
        let Some(fence) = fence.filter(|_| !self.standalone) else { return Ok(()) };
        if live.is_some() || self.placed.get(world) == Some(&fence) || fence > self.watermark {
            return Ok(());
        }
        Err(ErrorMsg {
            code: ErrorCode::TicketWrongServer,
            message: "the world was placed on another server since this ticket was made; allocate again".into(),
        })
    }

    /// Take in the allocator's answer.
    pub fn update(&mut self, reply: &HeartbeatReply) {
        self.placed = reply.placed.iter().map(|(w, f)| (w.clone(), *f)).collect();
        self.watermark = self.watermark.max(reply.watermark);
    }
}

/// What a heartbeat carried for one world, to be forgotten once acknowledged.
#[derive(Debug)]
pub struct Receipt<L> {
    cell: Arc<RoomCell<L>>,
    joined: usize,
    refused: usize,
    /// The member version of the bot list sent, if one was.
    members: Option<u64>,
}

/// Every live world's report, and the receipts to acknowledge them with.
pub fn reports<L: Link>(worlds: &Worlds<L>, now: Duration) -> (Vec<WorldReport>, Vec<Receipt<L>>) {
    let cells = worlds.cells();
    let mut reports = Vec::with_capacity(cells.len());
    let mut receipts = Vec::with_capacity(cells.len());
    for cell in cells {
        let st = cell.state.lock();
        if st.closed {
            continue;
        }
        let version = st.room.members_version();
        let due = st.report.acked_members != Some(version)
            || st.report.bots_sent_at.is_none_or(|t| now.saturating_sub(t) >= BOTS_REFRESH);
        let bots = (due && st.loaded).then(|| st.room.seated_names().map(str::to_owned).collect::<Vec<_>>());
        reports.push(WorldReport {
            world_id: cell.world_id().to_string(),
            fence: st.fence,
            occupancy: st.room.seats().len() as u32,
            joined: st.report.joined.clone(),
            bots,
            refused: st.report.refused.clone(),
        });
        let members = (due && st.loaded).then_some(version);
        let (joined, refused) = (st.report.joined.len(), st.report.refused.len());
        drop(st);
        receipts.push(Receipt { cell, joined, refused, members });
    }
    (reports, receipts)
}

/// The heartbeat that carried `receipts` was acknowledged at `now`.
pub fn acknowledged<L: Link>(receipts: Vec<Receipt<L>>, now: Duration) {
    for r in receipts {
        let mut st = r.cell.state.lock();
        let n = r.joined.min(st.report.joined.len());
        st.report.joined.drain(..n);
        let n = r.refused.min(st.report.refused.len());
        st.report.refused.drain(..n);
        if let Some(v) = r.members {
            st.report.acked_members = Some(v);
            st.report.bots_sent_at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(placed: &[(&str, u64)], watermark: u64) -> HeartbeatReply {
        HeartbeatReply {
            placed: placed.iter().map(|(w, f)| ((*w).to_owned(), *f)).collect(),
            watermark,
            ..HeartbeatReply::default()
        }
    }

    #[test]
    fn only_worlds_placed_here_are_loaded() {
        let mut v = PlacementView::new(false);
        v.update(&reply(&[("w1", 40)], 50));
        assert!(v.may_load("w1", Some(40), None).is_ok(), "listed with this fence");
        assert!(v.may_load("w2", Some(51), None).is_ok(), "placed after the last answer");
        let stale = v.may_load("w1", Some(30), None).unwrap_err();
        assert_eq!(stale.code, ErrorCode::TicketWrongServer, "an older placement of a listed world");
        assert!(v.may_load("w3", Some(45), None).is_err(), "placed before the answer, and not here");
        assert!(v.may_load("w3", Some(45), Some(45)).is_ok(), "live here already");
        assert!(v.may_load("w3", None, None).is_ok(), "hand-made tickets are adopted");
        assert!(PlacementView::new(true).may_load("w3", Some(1), None).is_ok(), "standalone");
    }
}
