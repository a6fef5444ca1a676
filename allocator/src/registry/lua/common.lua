-- Shared helpers, prepended to every script. Keys live under the prefix P (a hash tag such as
-- "{arena}" keeps them in one Redis Cluster slot):
--   P:servers        hash  server id -> JSON {region, ws, state, max_worlds, world_capacity, last_seen_ms}
--   P:placement      hash  world id -> "server|fence|placed_ms"
--   P:occ            hash  world id -> occupancy last reported by its server
--   P:res:<world>    zset  reservation id -> expiry (ms)
--   P:open           zset  world id -> seats used, for worlds with a free seat (snapshots list these)
--   P:sw:<server>    set   worlds placed on the server
--   P:fence          counter of placement generations (only grows)
--   P:lastfence      hash  world id -> the fence of its last placement (kept when forgotten)

-- Integers as text: Lua's default number formatting switches to exponents past 14 digits.
local function int(x)
  return string.format('%d', x)
end

local function split_placement(v)
  local s, f, t = string.match(v, '^(.*)|(%d+)|(%d+)$')
  return s, tonumber(f), tonumber(t)
end

-- The server's record if it was heard from within `timeout` ms of `now`, else nil.
local function alive_server(P, id, now, timeout)
  local raw = redis.call('HGET', P .. ':servers', id)
  if not raw then return nil end
  local s = cjson.decode(raw)
  if tonumber(s.last_seen_ms) + timeout < now then return nil end
  return s
end

-- Live reservations of a world, after dropping expired ones.
local function live_reservations(P, world, now)
  local rkey = P .. ':res:' .. world
  redis.call('ZREMRANGEBYSCORE', rkey, '-inf', now)
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

-- Drop a world's placement and everything counted for it.
local function forget(P, world, server)
  redis.call('HDEL', P .. ':placement', world)
  redis.call('SREM', P .. ':sw:' .. server, world)
  redis.call('HDEL', P .. ':occ', world)
  redis.call('ZREM', P .. ':open', world)
  redis.call('DEL', P .. ':res:' .. world)
end

-- Place a world on a server with a new fence.
local function place(P, world, server, now_s, occupancy, capacity)
  local fence = redis.call('INCR', P .. ':fence')
  redis.call('HSET', P .. ':lastfence', world, int(fence))
  redis.call('HSET', P .. ':placement', world, server .. '|' .. int(fence) .. '|' .. now_s)
  redis.call('SADD', P .. ':sw:' .. server, world)
  redis.call('HSET', P .. ':occ', world, occupancy)
  note_used(P, world, tonumber(occupancy), capacity)
  return fence
end
