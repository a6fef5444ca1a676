-- Record a gameserver's heartbeat.
-- ARGV: prefix, server id, server JSON (with last_seen_ms = now), now (ms), placement grace (ms),
--       number of worlds, then per world: world id, fence held, occupancy, n, and n joined
--       reservation ids.
-- Returns {fences (world, fence, world, fence, ...), evict (world, ...)}.
local P, sid, sjson, now_s = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('HSET', P .. ':servers', sid, sjson)
local me = cjson.decode(sjson)
local capacity = tonumber(me.world_capacity)
-- A draining server that no longer reports a world has saved it and let it go.
local draining = me.state == 'draining'

local fences, evict, reported = {}, {}, {}
local n, i = tonumber(ARGV[6]), 7
for _ = 1, n do
  local world, held, occ, nj = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  i = i + 4
  reported[world] = true
  -- Fences only grow, whatever this registry remembers.
  if tonumber(redis.call('GET', P .. ':fence') or '0') < held then
    redis.call('SET', P .. ':fence', ARGV[i - 3])
  end
  local current = redis.call('HGET', P .. ':placement', world)
  local last = tonumber(redis.call('HGET', P .. ':lastfence', world) or '0')
  if not current and held > 0 and held < last then
    -- A copy held with an older fence than the world's last placement is stale.
    table.insert(evict, world)
  elseif not current then
    -- Unknown here (a registry that restarted, a direct join): adopt it.
    local f = place(P, world, sid, now_s, occ, capacity)
    table.insert(fences, world)
    table.insert(fences, int(f))
  else
    local ps, pf = split_placement(current)
    if ps == sid then
      redis.call('SADD', P .. ':sw:' .. sid, world)
      redis.call('HSET', P .. ':occ', world, occ)
      local rkey = P .. ':res:' .. world
      for j = 0, nj - 1 do
        redis.call('ZREM', rkey, ARGV[i + j])
      end
      note_used(P, world, tonumber(occ) + live_reservations(P, world, now), capacity)
      table.insert(fences, world)
      table.insert(fences, int(pf))
    else
      table.insert(evict, world)
    end
  end
  i = i + nj
end

-- Placements this server holds but did not report: unloaded, or never loaded.
for _, world in ipairs(redis.call('SMEMBERS', P .. ':sw:' .. sid)) do
  if not reported[world] then
    local current = redis.call('HGET', P .. ':placement', world)
    if not current then
      redis.call('SREM', P .. ':sw:' .. sid, world)
    else
      local ps, _, placed = split_placement(current)
      if ps ~= sid then
        redis.call('SREM', P .. ':sw:' .. sid, world)
      elseif draining or (placed + grace < now and live_reservations(P, world, now) == 0) then
        forget(P, world, sid)
      end
    end
  end
end
return {fences, evict}
