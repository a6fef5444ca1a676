//! The registry in Redis, shared by every allocator replica. Each operation that changes state is
//! one Lua script (`lua/`), so replicas racing for the last seats can never overfill a world or
//! place one world twice: Redis runs one script at a time. The scripts read Redis's own clock.
//! Every call has a deadline (the connection's response timeout), and the connection comes back
//! by itself when Redis does.

use std::time::Duration;

use arena_sdk::allocator_api::{Heartbeat, HeartbeatReply};
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::schema::{LUA_PRELUDE, Timing};
use super::{Conflict, Located, Registry, RegistryError, Reserve, ReserveKind, Reserved};
use crate::snapshot::{ServerView, Snapshot, WorldView};

fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_PRELUDE}\n{body}"))
}

pub struct RedisRegistry {
    conn: ConnectionManager,
    prefix: String,
    timing: Timing,
    reserve: Script,
    heartbeat: Script,
    release: Script,
    purge: Script,
    snapshot: Script,
    locate: Script,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegistry").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisRegistry {
    /// Connect to `url`; every key starts with `prefix` (use a hash tag, e.g. `{arena}`). Every
    /// command answers within `deadline` or fails.
    pub async fn connect(url: &str, prefix: &str, timing: Timing, deadline: Duration) -> Result<Self, RegistryError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(deadline))
            .set_response_timeout(Some(deadline))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(deadline, ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| RegistryError::Timeout(deadline))??;
        Ok(RedisRegistry {
            conn,
            prefix: prefix.to_owned(),
            timing,
            reserve: script(include_str!("lua/reserve.lua")),
            heartbeat: script(include_str!("lua/heartbeat.lua")),
            release: script(include_str!("lua/release.lua")),
            purge: script(include_str!("lua/purge.lua")),
            snapshot: script(include_str!("lua/snapshot.lua")),
            locate: script(include_str!("lua/locate.lua")),
        })
    }
}

fn protocol(what: impl Into<String>) -> RegistryError {
    RegistryError::Protocol(what.into())
}

fn split_placement(v: &str) -> Option<(&str, u64)> {
    let mut parts = v.rsplitn(3, '|');
    let _placed = parts.next()?;
    let fence = parts.next()?.parse().ok()?;
    Some((parts.next()?, fence))
}

fn pairs(list: &[String], what: &str) -> Result<Vec<(String, u64)>, RegistryError> {
    list.chunks(2)
        .map(|pair| match pair {
            [w, f] => Ok((w.clone(), f.parse().map_err(|_| protocol(format!("{what}: bad fence")))?)),
            _ => Err(protocol(format!("odd {what} list"))),
        })
        .collect()
}

impl Registry for RedisRegistry {
    async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatReply, RegistryError> {
        let json = serde_json::to_string(&ServerView::from_heartbeat(hb, 0)).map_err(|e| protocol(e.to_string()))?;
        let t = &self.timing;
        let mut inv = self.heartbeat.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(&hb.server_id)
            .arg(json)
            .arg(t.placement_grace_ms)
            .arg(t.server_timeout_ms)
            .arg(t.seat_ttl_ms)
            .arg(t.lastfence_ttl_ms)
            .arg(t.fence_ahead_us)
            .arg(hb.worlds.len());
        for w in &hb.worlds {
            let nb: i64 = w.bots.as_ref().map_or(-1, |b| b.len() as i64);
            inv.arg(&w.world_id).arg(w.fence).arg(w.occupancy).arg(w.joined.len()).arg(nb).arg(w.refused.len());
            for id in &w.joined {
                inv.arg(id);
            }
            for bot in w.bots.iter().flatten() {
                inv.arg(bot);
            }
            for r in &w.refused {
                inv.arg(&r.nonce).arg(&r.bot);
            }
        }
        let out: redis::Value = inv.invoke_async(&mut self.conn.clone()).await?;
        type Answer = (String, Vec<String>, Vec<String>, Vec<String>, String);
        if let Ok((tag, world)) = redis::from_redis_value::<(String, String)>(out.clone())
            && tag == "bad_fence"
        {
            return Err(RegistryError::FenceAhead(world));
        }
        let (tag, fences, evict, placed, watermark): Answer =
            redis::from_redis_value(out).map_err(|e| protocol(format!("heartbeat: {e}")))?;
        if tag != "ok" {
            return Err(protocol(format!("heartbeat answered {tag}")));
        }
        Ok(HeartbeatReply {
            fences: pairs(&fences, "fence")?.into_iter().collect(),
            evict,
            placed: pairs(&placed, "placed")?.into_iter().collect(),
            watermark: watermark.parse().map_err(|_| protocol("bad watermark"))?,
            lease_ms: self.timing.lease_ms(),
        })
    }

    async fn reserve(&self, r: &Reserve<'_>) -> Result<Reserved, RegistryError> {
        let (kind, fence) = match r.kind {
            ReserveKind::Seat { fence } => ("seat", fence),
            ReserveKind::Place => ("place", 0),
        };
        let out: Vec<String> = self
            .reserve
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(r.world)
            .arg(r.server)
            .arg(kind)
            .arg(fence)
            .arg(r.id)
            .arg(r.bot)
            .arg(r.requested.unwrap_or(""))
            .arg(r.ttl_ms)
            .arg(self.timing.server_timeout_ms)
            .arg(self.timing.lastfence_ttl_ms)
            .arg(self.timing.warmup_ms())
            .arg(r.deadline_ms)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let parse = |s: Option<&String>| s.and_then(|v| v.parse::<u64>().ok());
        let text = |i: usize, what: &str| out.get(i).cloned().ok_or_else(|| protocol(format!("reserve: no {what}")));
        Ok(match out.first().map(String::as_str) {
            Some("ok") => Reserved::Ok {
                fence: parse(out.get(1)).ok_or_else(|| protocol("reserve: no fence"))?,
                used: parse(out.get(2)).ok_or_else(|| protocol("reserve: no count"))? as u32,
            },
            Some("held") => Reserved::Held {
                world: text(1, "world")?,
                server: text(2, "server")?,
                fence: parse(out.get(3)).ok_or_else(|| protocol("held: no fence"))?,
            },
            Some("held_unplaced") => Reserved::Conflict(Conflict::HeldUnplaced { world: text(1, "world")? }),
            Some("seat_elsewhere") => Reserved::Conflict(Conflict::SeatElsewhere { world: text(1, "world")? }),
            Some("moving") => Reserved::Conflict(Conflict::Moving),
            Some("warming_up") => Reserved::Conflict(Conflict::WarmingUp),
            Some("unheard") => Reserved::Conflict(Conflict::Unheard),
            Some("late") => Reserved::Conflict(Conflict::Late),
            Some("server_unavailable") => Reserved::Conflict(Conflict::ServerUnavailable),
            Some("server_full") => Reserved::Conflict(Conflict::ServerFull),
            Some("world_full") => Reserved::Conflict(Conflict::WorldFull),
            Some("world_moved") => Reserved::Conflict(Conflict::WorldMoved),
            Some("live_elsewhere") => Reserved::Conflict(Conflict::LiveElsewhere {
                server: text(1, "server")?,
                fence: parse(out.get(2)).ok_or_else(|| protocol("live_elsewhere: no fence"))?,
            }),
            other => return Err(protocol(format!("reserve answered {other:?}"))),
        })
    }

    async fn release(&self, world: &str, bot: &str, id: &str) -> Result<bool, RegistryError> {
        let removed: i64 = self
            .release
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(world)
            .arg(id)
            .arg(bot)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(removed == 1)
    }

    async fn snapshot(&self) -> Result<Snapshot, RegistryError> {
        type Raw = (Vec<String>, Vec<String>, Vec<u32>, Vec<String>, Vec<String>);
        let (clock, servers, counts, open, placements): Raw =
            self.snapshot.prepare_invoke().arg(&self.prefix).invoke_async(&mut self.conn.clone()).await?;
        let at =
            |i: usize| clock.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| protocol("snapshot: bad clock"));
        let mut snap = Snapshot { now_ms: at(0)?, resume_ms: at(1)?, heard_ms: at(3)?, ..Snapshot::default() };
        for (pair, count) in servers.chunks(2).zip(counts) {
            let [id, json] = pair else { return Err(protocol("odd server list")) };
            let s: ServerView = serde_json::from_str(json).map_err(|e| protocol(format!("server {id}: {e}")))?;
            snap.placed.insert(id.clone(), count);
            snap.servers.push(ServerView { id: id.clone(), ..s });
        }
        for (pair, placement) in open.chunks(2).zip(placements) {
            let [world, used] = pair else { return Err(protocol("odd open list")) };
            // A world forgotten between the two reads has no placement: skip it.
            let Some((server, fence)) = split_placement(&placement) else { continue };
            let used = used.parse::<f64>().map_err(|_| protocol("bad score"))? as u32;
            snap.worlds.push(WorldView { id: world.clone(), server: server.to_owned(), fence, used });
        }
        Ok(snap)
    }

    async fn locate(&self, world: Option<&str>, bot: Option<&str>) -> Result<Located, RegistryError> {
        let out: Vec<String> = self
            .locate
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(world.unwrap_or(""))
            .arg(bot.unwrap_or(""))
            .invoke_async(&mut self.conn.clone())
            .await?;
        let [server, fence, used, seat, reservation] = out.as_slice() else {
            return Err(protocol(format!("locate answered {out:?}")));
        };
        let world = match (world, server.is_empty()) {
            (Some(w), false) => Some(WorldView {
                id: w.to_owned(),
                server: server.clone(),
                fence: fence.parse().map_err(|_| protocol("locate: bad fence"))?,
                used: used.parse().map_err(|_| protocol("locate: bad count"))?,
            }),
            _ => None,
        };
        let some = |s: &String| (!s.is_empty()).then(|| s.clone());
        Ok(Located { world, seat: some(seat), reservation: some(reservation) })
    }

    async fn purge(&self, silence_ms: u64) -> Result<usize, RegistryError> {
        let gone: i64 =
            self.purge.prepare_invoke().arg(&self.prefix).arg(silence_ms).invoke_async(&mut self.conn.clone()).await?;
        Ok(gone.max(0) as usize)
    }

    async fn ping(&self) -> Result<(), RegistryError> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    fn timing(&self) -> Timing {
        self.timing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_parse() {
        assert_eq!(split_placement("gs-1|42|1795000000000"), Some(("gs-1", 42)));
        assert_eq!(split_placement("a|b|c|7|1"), Some(("a|b|c", 7)));
        assert_eq!(split_placement("nope"), None);
    }
}
