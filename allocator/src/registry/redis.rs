//! The registry in Redis, shared by every allocator replica. Each operation that changes state is
//! one Lua script (`lua/`), so replicas racing for the last seats can never overfill a world or
//! place one world twice: Redis runs one script at a time.

use arena_sdk::allocator_api::{Heartbeat, HeartbeatReply};
use redis::Script;
use redis::aio::ConnectionManager;

use super::{Conflict, Registry, RegistryError, Reserve, ReserveKind, Reserved, Timing};
use crate::snapshot::{ServerView, Snapshot, WorldView};

const COMMON: &str = include_str!("lua/common.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
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
    /// Connect to `url`; every key starts with `prefix` (use a hash tag, e.g. `{arena}`).
    pub async fn connect(url: &str, prefix: &str, timing: Timing) -> Result<Self, RegistryError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client).await?;
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

impl Registry for RedisRegistry {
    async fn heartbeat(&self, hb: &Heartbeat, now_ms: u64) -> Result<HeartbeatReply, RegistryError> {
        let json =
            serde_json::to_string(&ServerView::from_heartbeat(hb, now_ms)).map_err(|e| protocol(e.to_string()))?;
        let mut inv = self.heartbeat.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(&hb.server_id)
            .arg(json)
            .arg(now_ms)
            .arg(self.timing.placement_grace_ms)
            .arg(hb.worlds.len());
        for w in &hb.worlds {
            inv.arg(&w.world_id).arg(w.fence).arg(w.occupancy).arg(w.joined.len());
            for id in &w.joined {
                inv.arg(id);
            }
        }
        let (fences, evict): (Vec<String>, Vec<String>) = inv.invoke_async(&mut self.conn.clone()).await?;
        let mut reply = HeartbeatReply { evict, ..HeartbeatReply::default() };
        for pair in fences.chunks(2) {
            let [world, fence] = pair else { return Err(protocol("odd fence list")) };
            reply.fences.insert(world.clone(), fence.parse().map_err(|_| protocol("bad fence"))?);
        }
        Ok(reply)
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
            .arg(r.now_ms)
            .arg(r.expires_ms)
            .arg(self.timing.server_timeout_ms)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let parse = |s: Option<&String>| s.and_then(|v| v.parse::<u64>().ok());
        Ok(match out.first().map(String::as_str) {
            Some("ok") => Reserved::Ok {
                fence: parse(out.get(1)).ok_or_else(|| protocol("reserve: no fence"))?,
                used: parse(out.get(2)).ok_or_else(|| protocol("reserve: no count"))? as u32,
            },
            Some("server_unavailable") => Reserved::Conflict(Conflict::ServerUnavailable),
            Some("server_full") => Reserved::Conflict(Conflict::ServerFull),
            Some("world_full") => Reserved::Conflict(Conflict::WorldFull),
            Some("world_moved") => Reserved::Conflict(Conflict::WorldMoved),
            Some("live_elsewhere") => Reserved::Conflict(Conflict::LiveElsewhere {
                server: out.get(1).cloned().ok_or_else(|| protocol("live_elsewhere: no server"))?,
                fence: parse(out.get(2)).ok_or_else(|| protocol("live_elsewhere: no fence"))?,
            }),
            other => return Err(protocol(format!("reserve answered {other:?}"))),
        })
    }

    async fn release(&self, world: &str, id: &str) -> Result<bool, RegistryError> {
        let now = crate::unix_ms();
        let removed: i64 = self
            .release
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(world)
            .arg(id)
            .arg(now)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(removed == 1)
    }

    async fn snapshot(&self, _now_ms: u64) -> Result<Snapshot, RegistryError> {
        type Raw = (Vec<String>, Vec<u32>, Vec<String>, Vec<String>);
        let (servers, counts, open, placements): Raw =
            self.snapshot.prepare_invoke().arg(&self.prefix).invoke_async(&mut self.conn.clone()).await?;
        let mut snap = Snapshot::default();
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

    async fn locate(&self, world: &str, now_ms: u64) -> Result<Option<WorldView>, RegistryError> {
        let out: Vec<String> = self
            .locate
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(world)
            .arg(now_ms)
            .invoke_async(&mut self.conn.clone())
            .await?;
        match out.as_slice() {
            [] => Ok(None),
            [server, fence, used] => Ok(Some(WorldView {
                id: world.to_owned(),
                server: server.clone(),
                fence: fence.parse().map_err(|_| protocol("locate: bad fence"))?,
                used: used.parse().map_err(|_| protocol("locate: bad count"))?,
            })),
            other => Err(protocol(format!("locate answered {other:?}"))),
        }
    }

    async fn purge(&self, before_ms: u64) -> Result<usize, RegistryError> {
        let gone: i64 =
            self.purge.prepare_invoke().arg(&self.prefix).arg(before_ms).invoke_async(&mut self.conn.clone()).await?;
        Ok(gone.max(0) as usize)
    }

    async fn ping(&self) -> Result<(), RegistryError> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn.clone()).await?;
        Ok(())
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
