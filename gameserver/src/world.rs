//! The default arena game: a deterministic 2D world of up to `capacity` bots.
//!
//! No clock, no I/O: time advances by one fixed step per [`World::step`], and the only
//! randomness (spawn points) comes from a seeded generator. Given the same seed and the same
//! calls, two worlds are bit-for-bit equal, which the tests and the client mirror rely on.

use arena_sdk::protocol::{Act, BotDelta, BotId, BotState, Command, Event, Move, Tick, WorldSnapshot};
use serde::{Deserialize, Serialize};

use arena_sdk::rng::SplitMix64;

/// Rules and dimensions of a world.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldConfig {
    pub width: f32,
    pub height: f32,
    /// Most bots the world holds.
    pub capacity: usize,
    /// Walking speed in units per second.
    pub speed: f32,
    pub tick_hz: u32,
    /// Largest distance at which an interaction hits.
    pub reach: f32,
    /// Ticks a bot waits between scoring interactions.
    pub act_cooldown_ticks: u64,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            width: 1000.0,
            height: 1000.0,
            capacity: 30,
            speed: 100.0,
            tick_hz: 20,
            reach: 64.0,
            act_cooldown_ticks: 20,
        }
    }
}

/// The world holds `capacity` bots already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("world is full")]
pub struct WorldFull;

mod dirty {
    pub const NEW: u8 = 1;
    pub const POS: u8 = 2;
    pub const TARGET: u8 = 4;
    pub const STATUS: u8 = 8;
    pub const SCORE: u8 = 16;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Slot {
    bot: BotState,
    /// Fields changed since the last [`World::take_update`] (bits of `dirty`).
    dirty: u8,
    /// First tick at which this bot's interaction may score again.
    next_score_tick: Tick,
}

/// What changed in a world since the previous update.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub changed: Vec<BotDelta>,
    pub removed: Vec<BotId>,
    pub events: Vec<Event>,
    /// Names of the removed bots (for the activity log; not sent to clients).
    pub removed_names: Vec<String>,
}

impl Changes {
    pub fn clear(&mut self) {
        self.changed.clear();
        self.removed.clear();
        self.events.clear();
        self.removed_names.clear();
    }
}

/// A world's state as it is saved: everything but its rules (which come from the server that
/// loads it) and the changes not yet sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedWorld {
    tick: Tick,
    next_id: BotId,
    rng: SplitMix64,
    slots: Vec<Slot>,
}

impl SavedWorld {
    pub fn tick(&self) -> Tick {
        self.tick
    }

    pub fn bots(&self) -> impl Iterator<Item = &BotState> {
        self.slots.iter().map(|s| &s.bot)
    }
}

/// One world's state.
#[derive(Debug, Clone, PartialEq)]
pub struct World {
    config: WorldConfig,
    tick: Tick,
    next_id: BotId,
    rng: SplitMix64,
    /// Ordered by id: ids only grow and new bots are pushed at the end.
    slots: Vec<Slot>,
    removed: Vec<BotId>,
    removed_names: Vec<String>,
    events: Vec<Event>,
}

impl World {
    pub fn new(config: WorldConfig, seed: u64) -> Self {
        World {
            slots: Vec::with_capacity(config.capacity),
            config,
            tick: 0,
            next_id: 1,
            rng: SplitMix64::new(seed),
            removed: Vec::new(),
            removed_names: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The state to save.
    pub fn save(&self) -> SavedWorld {
        SavedWorld { tick: self.tick, next_id: self.next_id, rng: self.rng.clone(), slots: self.slots.clone() }
    }

    /// A world continuing from `saved` under `config`. Bots beyond the capacity are dropped
    /// (the newest first); every bot is sent whole with the next update.
    pub fn restore(config: WorldConfig, saved: SavedWorld) -> Self {
        let mut slots = saved.slots;
        slots.sort_by_key(|s| s.bot.id);
        slots.truncate(config.capacity);
        for s in &mut slots {
            s.dirty = dirty::NEW;
        }
        World {
            config,
            tick: saved.tick,
            next_id: saved.next_id.max(slots.last().map_or(1, |s| s.bot.id + 1)),
            rng: saved.rng,
            slots,
            removed: Vec::new(),
            removed_names: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn config(&self) -> &WorldConfig {
        &self.config
    }
    /// The last completed tick.
    pub fn tick(&self) -> Tick {
        self.tick
    }
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.config.capacity
    }
    pub fn bot(&self, id: BotId) -> Option<&BotState> {
        self.slot_index(id).map(|i| &self.slots[i].bot)
    }
    pub fn bots(&self) -> impl Iterator<Item = &BotState> {
        self.slots.iter().map(|s| &s.bot)
    }

    fn slot_index(&self, id: BotId) -> Option<usize> {
        self.slots.binary_search_by_key(&id, |s| s.bot.id).ok()
    }

    /// Place a new bot at a random point.
    pub fn add_bot(&mut self, name: &str) -> Result<BotId, WorldFull> {
        if self.is_full() {
            return Err(WorldFull);
        }
        let id = self.next_id;
        self.next_id += 1;
        let x = self.rng.next_f32() * self.config.width;
        let y = self.rng.next_f32() * self.config.height;
        let bot = BotState { id, name: name.to_owned(), x, y, tx: x, ty: y, status: "idle".to_owned(), score: 0 };
        self.slots.push(Slot { bot, dirty: dirty::NEW, next_score_tick: 0 });
        self.events.push(Event::Joined { bot: id, name: name.to_owned() });
        Ok(id)
    }

    /// Remove a bot; false when it is not in the world.
    pub fn remove_bot(&mut self, id: BotId) -> bool {
        let Some(i) = self.slot_index(id) else {
            return false;
        };
        let slot = self.slots.remove(i);
        self.removed.push(id);
        self.removed_names.push(slot.bot.name);
        self.events.push(Event::Left { bot: id });
        true
    }

    /// Apply one validated command of bot `id`; ignored when the bot is gone.
    pub fn apply(&mut self, id: BotId, command: &Command) {
        let Some(i) = self.slot_index(id) else {
            return;
        };
        match command {
            Command::Move(m) => {
                let (w, h) = (self.config.width, self.config.height);
                let slot = &mut self.slots[i];
                let (tx, ty) = match *m {
                    Move::To([x, y]) => (x, y),
                    Move::By([dx, dy]) => (slot.bot.x + dx, slot.bot.y + dy),
                };
                let (tx, ty) = (tx.clamp(0.0, w), ty.clamp(0.0, h));
                if (tx, ty) != (slot.bot.tx, slot.bot.ty) {
                    slot.bot.tx = tx;
                    slot.bot.ty = ty;
                    slot.dirty |= dirty::TARGET;
                }
            }
            Command::Say(text) => self.events.push(Event::Say { bot: id, text: text.clone() }),
            Command::Act(act) => self.act(i, act),
        }
    }

    fn act(&mut self, i: usize, act: &Act) {
        let id = self.slots[i].bot.id;
        let Some(target) = act.target else {
            // An emote: it becomes the bot's status.
            let slot = &mut self.slots[i];
            if slot.bot.status != act.action {
                slot.bot.status.clone_from(&act.action);
                slot.dirty |= dirty::STATUS;
            }
            self.events.push(Event::Act { bot: id, action: act.action.clone(), target: None, hit: false });
            return;
        };
        // The world's clock is the tick being computed: inputs apply before the step.
        let now = self.tick + 1;
        let hit = match self.slot_index(target) {
            Some(j) if j != i && now >= self.slots[i].next_score_tick => {
                let (a, b) = (&self.slots[i].bot, &self.slots[j].bot);
                let (dx, dy) = (a.x - b.x, a.y - b.y);
                if dx * dx + dy * dy <= self.config.reach * self.config.reach {
                    for k in [i, j] {
                        self.slots[k].bot.score = self.slots[k].bot.score.saturating_add(1);
                        self.slots[k].dirty |= dirty::SCORE;
                    }
                    self.slots[i].next_score_tick = now + self.config.act_cooldown_ticks;
                    true
                } else {
                    false
                }
            }
            _ => false,
        };
        self.events.push(Event::Act { bot: id, action: act.action.clone(), target: Some(target), hit });
    }

    /// Advance one tick: every bot walks toward its target.
    pub fn step(&mut self) {
        self.tick += 1;
        let stride = self.config.speed / self.config.tick_hz as f32;
        for slot in &mut self.slots {
            let b = &mut slot.bot;
            if (b.x, b.y) == (b.tx, b.ty) {
                continue;
            }
            let (dx, dy) = (b.tx - b.x, b.ty - b.y);
            let dist = (dx * dx + dy * dy).sqrt();
            if dist <= stride {
                b.x = b.tx;
                b.y = b.ty;
            } else {
                b.x += dx / dist * stride;
                b.y += dy / dist * stride;
            }
            slot.dirty |= dirty::POS;
        }
    }

    /// Move everything that changed since the last call into `out` (which is cleared first).
    pub fn take_update(&mut self, out: &mut Changes) {
        out.clear();
        for slot in &mut self.slots {
            if slot.dirty == 0 {
                continue;
            }
            let b = &slot.bot;
            let d = slot.dirty;
            let delta = if d & dirty::NEW != 0 {
                BotDelta::full(b)
            } else {
                BotDelta {
                    id: b.id,
                    name: None,
                    x: (d & dirty::POS != 0).then_some(b.x),
                    y: (d & dirty::POS != 0).then_some(b.y),
                    tx: (d & dirty::TARGET != 0).then_some(b.tx),
                    ty: (d & dirty::TARGET != 0).then_some(b.ty),
                    status: (d & dirty::STATUS != 0).then(|| b.status.clone()),
                    score: (d & dirty::SCORE != 0).then_some(b.score),
                }
            };
            out.changed.push(delta);
            slot.dirty = 0;
        }
        std::mem::swap(&mut out.removed, &mut self.removed);
        std::mem::swap(&mut out.removed_names, &mut self.removed_names);
        std::mem::swap(&mut out.events, &mut self.events);
    }

    /// The whole state, bots in id order.
    pub fn snapshot(&self) -> WorldSnapshot {
        WorldSnapshot {
            width: self.config.width,
            height: self.config.height,
            bots: self.slots.iter().map(|s| s.bot.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> World {
        World::new(WorldConfig { capacity: 3, ..WorldConfig::default() }, 7)
    }

    #[test]
    fn same_seed_same_world() {
        let (mut a, mut b) = (world(), world());
        for w in [&mut a, &mut b] {
            let id = w.add_bot("x").unwrap();
            w.apply(id, &Command::Move(Move::To([10.0, 990.0])));
            for _ in 0..50 {
                w.step();
            }
        }
        assert_eq!(a, b);
        assert_ne!(a, World::new(WorldConfig { capacity: 3, ..WorldConfig::default() }, 8));
    }

    #[test]
    fn capacity_is_enforced() {
        let mut w = world();
        for n in 0..3 {
            w.add_bot(&format!("b{n}")).unwrap();
        }
        assert_eq!(w.add_bot("extra"), Err(WorldFull));
        assert!(w.remove_bot(2));
        assert!(!w.remove_bot(2));
        assert_eq!(w.add_bot("again"), Ok(4), "ids are never reused");
    }

    #[test]
    fn bots_walk_at_speed_and_stop_at_target() {
        let mut w = world();
        let id = w.add_bot("walker").unwrap();
        let start = w.bot(id).unwrap().clone();
        // Aim 12 units away on the x axis (clamped into the arena): 5 units per tick at 100/s, 20 Hz.
        let tx = if start.x < 500.0 { start.x + 12.0 } else { start.x - 12.0 };
        w.apply(id, &Command::Move(Move::To([tx, start.y])));
        w.step();
        assert!((w.bot(id).unwrap().x - start.x).abs() - 5.0 < 1e-3);
        w.step();
        w.step();
        assert_eq!(w.bot(id).unwrap().x, tx);
        let mut out = Changes::default();
        w.take_update(&mut out);
        w.step();
        w.take_update(&mut out);
        assert!(out.changed.is_empty(), "a bot at its target does not change");
    }

    #[test]
    fn moves_are_clamped_to_the_arena() {
        let mut w = world();
        let id = w.add_bot("b").unwrap();
        w.apply(id, &Command::Move(Move::By([-1e9, 1e9])));
        let b = w.bot(id).unwrap();
        assert_eq!((b.tx, b.ty), (0.0, 1000.0));
    }

    #[test]
    fn interactions_score_in_reach_with_cooldown() {
        let mut w = world();
        let a = w.add_bot("a").unwrap();
        let b = w.add_bot("b").unwrap();
        let pb = w.bot(b).unwrap().clone();
        w.apply(a, &Command::Move(Move::To([pb.x, pb.y])));
        for _ in 0..400 {
            w.step();
        }
        let hi5 = Command::Act(Act { action: "high_five".into(), target: Some(b) });
        let mut out = Changes::default();
        w.take_update(&mut out);
        w.apply(a, &hi5);
        w.apply(a, &hi5); // cooldown: no second score in the same tick
        w.step();
        w.take_update(&mut out);
        assert_eq!(w.bot(a).unwrap().score, 1);
        assert_eq!(w.bot(b).unwrap().score, 1);
        let hits: Vec<bool> = out
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Act { hit, .. } => Some(*hit),
                _ => None,
            })
            .collect();
        assert_eq!(hits, vec![true, false]);
        // Self-interaction and unknown targets never score.
        w.apply(a, &Command::Act(Act { action: "x".into(), target: Some(a) }));
        w.apply(a, &Command::Act(Act { action: "x".into(), target: Some(99) }));
        assert_eq!(w.bot(a).unwrap().score, 1);
    }

    #[test]
    fn saved_worlds_continue_exactly() {
        let mut w = world();
        let a = w.add_bot("a").unwrap();
        w.apply(a, &Command::Move(Move::To([500.0, 500.0])));
        w.apply(a, &Command::Act(Act { action: "wave".into(), target: None }));
        for _ in 0..7 {
            w.step();
        }
        let bytes = rmp_serde::to_vec(&w.save()).unwrap();
        let mut back = World::restore(w.config().clone(), rmp_serde::from_slice(&bytes).unwrap());
        assert_eq!(back.snapshot(), w.snapshot());
        assert_eq!(back.tick(), w.tick());
        // Both continue identically, new bots included (same ids, same spawn points).
        let mut out = Changes::default();
        back.take_update(&mut out);
        assert_eq!(out.changed.len(), 1, "restored bots are sent whole");
        for x in [&mut w, &mut back] {
            x.add_bot("b").unwrap();
            x.step();
        }
        assert_eq!(back.snapshot(), w.snapshot());
        // A smaller capacity keeps the oldest bots.
        let small = World::restore(WorldConfig { capacity: 1, ..w.config().clone() }, w.save());
        assert_eq!(small.bots().map(|b| b.name.as_str()).collect::<Vec<_>>(), vec!["a"]);
    }

    #[test]
    fn updates_carry_only_changed_fields() {
        let mut w = world();
        let a = w.add_bot("a").unwrap();
        let mut out = Changes::default();
        w.take_update(&mut out);
        assert_eq!(out.changed[0].name.as_deref(), Some("a"), "a new bot is sent whole");
        assert_eq!(out.events, vec![Event::Joined { bot: a, name: "a".into() }]);
        w.apply(a, &Command::Act(Act { action: "wave".into(), target: None }));
        w.step();
        w.take_update(&mut out);
        assert_eq!(out.changed, vec![BotDelta { id: a, status: Some("wave".into()), ..Default::default() }]);
        w.remove_bot(a);
        w.take_update(&mut out);
        assert_eq!(out.removed, vec![a]);
        assert_eq!(out.events, vec![Event::Left { bot: a }]);
    }
}
