-- Shared helpers, prepended to every script. The key layout is owned by registry/schema.rs
-- (which documents it); every key lives under the prefix P (a hash tag such as "{arena}" keeps
-- them in one Redis Cluster slot). Time is the registry's own: redis.call('TIME'), never the
-- caller's clock.
--
-- Timing arguments every script gets after its own: ARGV[1] prefix, then (at the positions each
-- script says) server timeout, seat ttl, lastfence ttl (all ms).

-- Integers as text: Lua's default number formatting switches to exponents past 14 digits.
local function int(x)
  return string.format('%d', x)
end

-- The registry's time: milliseconds and microseconds since the Unix epoch.
local T = redis.call('TIME')
local NOW = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
local NOW_US = tonumber(T[1]) * 1000000 + tonumber(T[2])

local function split_placement(v)
  local s, f, t = string.match(v, '^(.*)|(%d+)|(%d+)$')
  return s, tonumber(f), tonumber(t)
end

-- When the registry came back from a blackout (no heartbeat from anyone for a while): every
-- server counts as heard from then, so an outage of the registry itself never makes live
-- servers look dead.
local function resumed(P)
  return tonumber(redis.call('GET', P .. ':resume_ms') or '0')
end

-- Whether the registry has heard from no server for half a timeout: it was out of reach itself,
-- and a server that looks silent may only be unheard.
local function silent(P, timeout)
  local last = tonumber(redis.call('GET', P .. ':hb_last') or '0')
  return last > 0 and NOW - last > timeout / 2
end

-- The server's record if it was heard from within `timeout` ms (or since a blackout), else nil.
local function alive_server(P, id, timeout)
  local raw = redis.call('HGET', P .. ':servers', id)
  if not raw then return nil end
  local s = cjson.decode(raw)
  if math.max(tonumber(s.last_seen_ms), resumed(P)) + timeout < NOW then return nil end
  return s
end

-- Live reservations of a world, after dropping expired ones.
local function live_reservations(P, world)
  local rkey = P .. ':res:' .. world
  redis.call('ZREMRANGEBYSCORE', rkey, '-inf', NOW)
  return redis.call('ZCARD', rkey)
end

-- Record a world's seats in use: listed in P:open while it has a free seat.
local function note_used(P, world, used, capacity)
  if used < capacity then
    redis.call('ZADD', P .. ':open', used, world)
  else
    redis.call('ZREM', P .. ':open', world)
  end
end

-- Drop a world's placement and everything counted for it. Its seats (P:wbots, P:botseat) stay:
-- their bots get them back wherever the world is placed next.
local function forget(P, world, server)
  redis.call('HDEL', P .. ':placement', world)
  redis.call('SREM', P .. ':sw:' .. server, world)
  redis.call('HDEL', P .. ':occ', world)
  redis.call('ZREM', P .. ':open', world)
  redis.call('DEL', P .. ':res:' .. world)
end

-- A new fence: larger than every fence issued before, and than the registry's clock in
-- microseconds, so fences keep growing even across a registry that lost its data.
local function next_fence(P)
  local f = math.max(tonumber(redis.call('GET', P .. ':fence') or '0') + 1, NOW_US)
  redis.call('SET', P .. ':fence', int(f))
  return f
end

-- Place a world on a server with a new fence; its occupancy starts at the seats kept for it.
local function place(P, world, server, capacity, lastfence_ttl)
  local fence = next_fence(P)
  redis.call('SET', P .. ':lastfence:' .. world, int(fence), 'PX', lastfence_ttl)
  redis.call('HSET', P .. ':placement', world, server .. '|' .. int(fence) .. '|' .. int(NOW))
  redis.call('SADD', P .. ':sw:' .. server, world)
  local kept = redis.call('SCARD', P .. ':wbots:' .. world)
  redis.call('HSET', P .. ':occ', world, kept)
  note_used(P, world, kept, capacity)
  return fence
end

-- The world a bot holds a seat or a live reservation in, and the reservation ("world|id|exp").
local function bot_holds(P, bot)
  local seat = redis.call('GET', P .. ':botseat:' .. bot)
  local res = redis.call('GET', P .. ':botres:' .. bot)
  local rw, rid, rexp
  if res then
    rw, rid, rexp = string.match(res, '^(.*)|(.*)|(%d+)$')
    if rexp and tonumber(rexp) <= NOW then rw, rid = nil, nil end
  end
  return seat, rw, rid
end
