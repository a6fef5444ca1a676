//! The client side of a session, without I/O: a local mirror of one world that applies `welcome`,
//! `update` and `snapshot` messages, notices a missed tick, and numbers outgoing inputs.

use std::collections::BTreeMap;

use crate::protocol::{
    BotId, BotState, ClientMsg, Command, ErrorMsg, Input, ServerMsg, Snapshot, Tick, Update, Welcome, WorldSnapshot,
};

/// A local copy of one world, as the server last described it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    world: String,
    me: BotId,
    tick: Tick,
    tick_hz: u32,
    ack_seq: u32,
    width: f32,
    height: f32,
    bots: BTreeMap<BotId, BotState>,
}

/// An update that does not follow from the mirror's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    #[error("missed ticks: expected tick {expected}, got {got}")]
    Gap { expected: Tick, got: Tick },
    #[error("update changes bot {0}, which this mirror does not know")]
    UnknownBot(BotId),
}

impl Mirror {
    pub fn from_welcome(w: &Welcome) -> Self {
        let mut m = Mirror {
            world: w.world.clone(),
            me: w.bot,
            tick: 0,
            tick_hz: w.tick_hz,
            ack_seq: 0,
            width: 0.0,
            height: 0.0,
            bots: BTreeMap::new(),
        };
        m.reset(w.tick, w.ack_seq, &w.snapshot);
        m
    }

    /// Replace the state with a snapshot taken at `tick`.
    pub fn reset(&mut self, tick: Tick, ack_seq: u32, snapshot: &WorldSnapshot) {
        self.tick = tick;
        self.ack_seq = ack_seq;
        self.width = snapshot.width;
        self.height = snapshot.height;
        self.bots = snapshot.bots.iter().map(|b| (b.id, b.clone())).collect();
    }

    /// Apply the update of the tick after the mirror's. On error the mirror is stale and needs a
    /// snapshot (the caller sends `resync`).
    pub fn apply_update(&mut self, u: &Update) -> Result<(), MirrorError> {
        if u.tick != self.tick + 1 {
            return Err(MirrorError::Gap { expected: self.tick + 1, got: u.tick });
        }
        for id in &u.removed {
            self.bots.remove(id);
        }
        for delta in &u.changed {
            match self.bots.get_mut(&delta.id) {
                Some(bot) => delta.apply_to(bot),
                None => {
                    let bot = delta.to_state().ok_or(MirrorError::UnknownBot(delta.id))?;
                    self.bots.insert(bot.id, bot);
                }
            }
        }
        self.tick = u.tick;
        self.ack_seq = u.ack_seq;
        Ok(())
    }

    pub fn world(&self) -> &str {
        &self.world
    }
    /// This client's bot id.
    pub fn me(&self) -> BotId {
        self.me
    }
    pub fn tick(&self) -> Tick {
        self.tick
    }
    pub fn tick_hz(&self) -> u32 {
        self.tick_hz
    }
    /// The last input `seq` the server has applied for this seat.
    pub fn ack_seq(&self) -> u32 {
        self.ack_seq
    }
    pub fn bot(&self, id: BotId) -> Option<&BotState> {
        self.bots.get(&id)
    }
    pub fn bots(&self) -> impl Iterator<Item = &BotState> {
        self.bots.values()
    }
    pub fn len(&self) -> usize {
        self.bots.len()
    }
    pub fn is_empty(&self) -> bool {
        self.bots.is_empty()
    }

    /// The mirror as a snapshot (bots in id order).
    pub fn snapshot(&self) -> WorldSnapshot {
        WorldSnapshot { width: self.width, height: self.height, bots: self.bots.values().cloned().collect() }
    }
}

/// What a server message meant for the session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A `welcome` (re)started the mirror.
    Welcomed,
    /// An `update` was applied.
    Updated,
    /// An `update` did not follow: send `resync` ([`ClientSession::resync`]) and wait.
    ResyncNeeded(MirrorError),
    /// An `update` arrived while waiting for a resync snapshot and was skipped.
    Skipped,
    /// A `snapshot` replaced the mirror.
    Resynced,
    /// The server refused something.
    Error(ErrorMsg),
    Pong(u64),
    /// An `update` or `snapshot` before any `welcome`.
    Unexpected,
}

/// The client half of a connection: the mirror, input numbering and resync state.
#[derive(Debug, Clone, Default)]
pub struct ClientSession {
    mirror: Option<Mirror>,
    last_seq: u32,
    awaiting_resync: bool,
}

impl ClientSession {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn mirror(&self) -> Option<&Mirror> {
        self.mirror.as_ref()
    }

    /// The `seq` of the last input handed out.
    pub fn last_seq(&self) -> u32 {
        self.last_seq
    }

    /// Number a command; the returned message is ready to send.
    pub fn input(&mut self, command: Command) -> ClientMsg {
        self.last_seq = self.last_seq.wrapping_add(1).max(1);
        ClientMsg::Input(Input::new(self.last_seq, command))
    }

    /// The `resync` request, remembering that one is outstanding.
    pub fn resync(&mut self) -> ClientMsg {
        self.awaiting_resync = true;
        ClientMsg::Resync
    }

    pub fn awaiting_resync(&self) -> bool {
        self.awaiting_resync
    }

    /// Apply one server message.
    pub fn handle(&mut self, msg: &ServerMsg) -> SessionEvent {
        match msg {
            ServerMsg::Welcome(w) => {
                // A resumed seat continues its numbering after what the server applied.
                self.last_seq = self.last_seq.max(w.ack_seq);
                self.mirror = Some(Mirror::from_welcome(w));
                self.awaiting_resync = false;
                SessionEvent::Welcomed
            }
            ServerMsg::Update(u) => {
                let Some(mirror) = self.mirror.as_mut() else {
                    return SessionEvent::Unexpected;
                };
                if self.awaiting_resync {
                    return SessionEvent::Skipped;
                }
                match mirror.apply_update(u) {
                    Ok(()) => SessionEvent::Updated,
                    Err(e) => SessionEvent::ResyncNeeded(e),
                }
            }
            ServerMsg::Snapshot(Snapshot { tick, ack_seq, snapshot, .. }) => {
                let Some(mirror) = self.mirror.as_mut() else {
                    return SessionEvent::Unexpected;
                };
                mirror.reset(*tick, *ack_seq, snapshot);
                self.awaiting_resync = false;
                SessionEvent::Resynced
            }
            ServerMsg::Error(e) => SessionEvent::Error(e.clone()),
            ServerMsg::Pong { nonce } => SessionEvent::Pong(*nonce),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BotDelta, Event};

    fn bot(id: BotId, x: f32) -> BotState {
        BotState { id, name: format!("b{id}"), x, y: 0.0, tx: x, ty: 0.0, status: "idle".into(), score: 0 }
    }

    fn welcome() -> Welcome {
        Welcome {
            bot: 1,
            world: "w".into(),
            tick: 10,
            tick_hz: 20,
            ack_seq: 4,
            resume_token: "r".into(),
            resume_grace_ms: 10_000,
            snapshot: WorldSnapshot { width: 100.0, height: 100.0, bots: vec![bot(1, 1.0), bot(2, 2.0)] },
        }
    }

    fn update(tick: Tick, changed: Vec<BotDelta>, removed: Vec<BotId>) -> ServerMsg {
        ServerMsg::Update(Update { ack_seq: 5, tick, changed, removed, events: vec![Event::Left { bot: 2 }] })
    }

    #[test]
    fn applies_updates_in_order() {
        let mut s = ClientSession::new();
        assert_eq!(s.handle(&update(11, vec![], vec![])), SessionEvent::Unexpected);
        assert_eq!(s.handle(&ServerMsg::Welcome(welcome())), SessionEvent::Welcomed);
        assert_eq!(s.last_seq(), 4, "numbering continues after the server's ack");
        let moved = BotDelta { id: 1, x: Some(9.0), ..Default::default() };
        let new = BotDelta::full(&bot(3, 3.0));
        assert_eq!(s.handle(&update(11, vec![moved, new], vec![2])), SessionEvent::Updated);
        let m = s.mirror().unwrap();
        assert_eq!(m.tick(), 11);
        assert_eq!(m.ack_seq(), 5);
        assert_eq!(m.bot(1).unwrap().x, 9.0);
        assert!(m.bot(2).is_none());
        assert_eq!(m.bot(3), Some(&bot(3, 3.0)));
        assert_eq!(s.input(Command::Say("x".into())), ClientMsg::Input(Input::new(5, Command::Say("x".into()))));
    }

    #[test]
    fn gap_asks_for_resync_and_skips_until_snapshot() {
        let mut s = ClientSession::new();
        s.handle(&ServerMsg::Welcome(welcome()));
        assert_eq!(
            s.handle(&update(13, vec![], vec![])),
            SessionEvent::ResyncNeeded(MirrorError::Gap { expected: 11, got: 13 })
        );
        assert_eq!(s.resync(), ClientMsg::Resync);
        assert_eq!(s.handle(&update(14, vec![], vec![])), SessionEvent::Skipped);
        let snap = Snapshot {
            tick: 14,
            ack_seq: 6,
            snapshot: WorldSnapshot { width: 1.0, height: 1.0, bots: vec![] },
            events: vec![],
            events_truncated: false,
        };
        assert_eq!(s.handle(&ServerMsg::Snapshot(snap)), SessionEvent::Resynced);
        assert_eq!(s.handle(&update(15, vec![], vec![])), SessionEvent::Updated);
        assert!(s.mirror().unwrap().is_empty());
    }

    #[test]
    fn partial_delta_for_unknown_bot_needs_resync() {
        let mut s = ClientSession::new();
        s.handle(&ServerMsg::Welcome(welcome()));
        let stray = BotDelta { id: 42, x: Some(1.0), ..Default::default() };
        assert_eq!(s.handle(&update(11, vec![stray], vec![])), SessionEvent::ResyncNeeded(MirrorError::UnknownBot(42)));
    }
}
