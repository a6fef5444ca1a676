//! What ticking and unloading worlds write to the activity log: the records of each tick, and
//! session ends when seats are freed or worlds go away.

use std::sync::Arc;

use arena_sdk::protocol::BotId;

use crate::persist::activity::{ActivityLog, Record, records_of_tick};
use crate::worlds::{TickHooks, WorldState};

/// The activity log side of a shard tick (nothing without a log).
#[derive(Debug)]
pub struct ActivityHooks<'a> {
    log: Option<&'a ActivityLog>,
    at_ms: u64,
}

impl<'a> ActivityHooks<'a> {
    pub fn new(log: Option<&'a ActivityLog>, at_ms: u64) -> Self {
        ActivityHooks { log, at_ms }
    }
}

impl<L> TickHooks<L> for ActivityHooks<'_> {
    fn ticked(&mut self, world: &Arc<str>, st: &mut WorldState<L>) {
        let Some(log) = self.log else { return };
        let w = st.room.world();
        for r in records_of_tick(world, st.room.changes(), |id| w.bot(id).map(|b| b.name.clone()), self.at_ms, log) {
            log.push(r);
        }
        if !st.room.changes().removed.is_empty() {
            let removed = st.room.changes().removed.clone();
            close_sessions(self, st, Some(&removed));
        }
    }

    fn unloading(&mut self, _: &Arc<str>, st: &mut WorldState<L>) {
        close_sessions(self, st, None);
    }
}

/// End the sessions of `bots` (of every seat with `None`).
pub fn close_sessions<L>(hooks: &mut ActivityHooks<'_>, st: &mut WorldState<L>, bots: Option<&[BotId]>) {
    let Some(log) = hooks.log else { return };
    let ended: Vec<String> = match bots {
        Some(ids) => ids.iter().filter_map(|b| st.sessions.remove(b)).collect(),
        None => st.sessions.drain().map(|(_, id)| id).collect(),
    };
    for id in ended {
        log.push(Record::SessionEnd { id, at_ms: hooks.at_ms });
    }
}
