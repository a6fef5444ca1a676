-- Record a gameserver's heartbeat.
-- ARGV: prefix, server id, server JSON (last_seen_ms is set here), placement grace (ms),
--       server timeout (ms), seat ttl (ms), lastfence ttl (ms), max fence ahead of the clock (us),
--       number of worlds, then per world: world id, fence held, occupancy, nj, nb (-1: no bot
--       list), nr, then nj joined reservation ids, nb bot ids, nr refused (nonce, bot) pairs.
-- Returns {'ok', fences (world, fence, ...), evict (world, ...), placed (world, fence, ...),
--          watermark} or {'bad_fence', world}.
local P, sid = ARGV[1], ARGV[2]
local grace, timeout = tonumber(ARGV[4]), tonumber(ARGV[5])
local seat_ttl, lastfence_ttl, ahead = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])

-- A fence from the future is a lie: refuse the heartbeat before it changes anything.
do
  local i = 10
  for _ = 1, tonumber(ARGV[9]) do
    if tonumber(ARGV[i + 1]) > NOW_US + ahead then return {'bad_fence', ARGV[i]} end
    i = i + 6 + tonumber(ARGV[i + 3]) + math.max(tonumber(ARGV[i + 4]), 0) + 2 * tonumber(ARGV[i + 5])
  end
end

-- The registry starts counting (warm-up) when it is first used.
redis.call('SET', P .. ':started', int(NOW), 'NX')

-- A registry that heard from nobody for half a server timeout was itself out of reach.
local last_any = tonumber(redis.call('GET', P .. ':hb_last') or '0')
if last_any > 0 and NOW - last_any > timeout / 2 then
  redis.call('SET', P .. ':resume_ms', int(NOW))
end
redis.call('SET', P .. ':hb_last', int(NOW))

local me = cjson.decode(ARGV[3])
me.last_seen_ms = NOW
redis.call('HSET', P .. ':servers', sid, cjson.encode(me))
local capacity = tonumber(me.world_capacity)
-- A draining server that no longer reports a world has saved it and let it go.
local draining = me.state == 'draining'

local fences, evict, reported = {}, {}, {}
local n, i = tonumber(ARGV[9]), 10
for _ = 1, n do
  local world, held, occ = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local nj, nb, nr = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  i = i + 6
  local joined_at, bots_at = i, i + nj
  local refused_at = bots_at + math.max(nb, 0)
  i = refused_at + 2 * nr
  reported[world] = true
  -- Fences only grow, whatever this registry remembers.
  if tonumber(redis.call('GET', P .. ':fence') or '0') < held then
    redis.call('SET', P .. ':fence', int(held))
  end
  local current = redis.call('HGET', P .. ':placement', world)
  local last = tonumber(redis.call('GET', P .. ':lastfence:' .. world) or '0')
  local mine = false
  if not current and held > 0 and held < last then
    -- A copy held with an older fence than the world's last placement is stale.
    table.insert(evict, world)
  elseif not current then
    -- Unknown here (a registry that lost its data, a direct join): adopt it.
    local f = place(P, world, sid, capacity, lastfence_ttl)
    redis.call('HSET', P .. ':occ', world, occ)
    note_used(P, world, tonumber(occ) + live_reservations(P, world), capacity)
    table.insert(fences, world)
    table.insert(fences, int(f))
    mine = true
  else
    local ps, pf = split_placement(current)
    if ps == sid then
      redis.call('SADD', P .. ':sw:' .. sid, world)
      redis.call('HSET', P .. ':occ', world, occ)
      local rkey = P .. ':res:' .. world
      for j = 0, nj - 1 do
        redis.call('ZREM', rkey, ARGV[joined_at + j])
      end
      table.insert(fences, world)
      table.insert(fences, int(pf))
      mine = true
    else
      table.insert(evict, world)
    end
  end
  if mine then
    -- Refused tickets free their reservations at once.
    for j = 0, nr - 1 do
      local nonce, bot = ARGV[refused_at + 2 * j], ARGV[refused_at + 2 * j + 1]
      redis.call('ZREM', P .. ':res:' .. world, nonce)
      local res = redis.call('GET', P .. ':botres:' .. bot)
      if res and string.sub(res, 1, #world + #nonce + 2) == world .. '|' .. nonce .. '|' then
        redis.call('DEL', P .. ':botres:' .. bot)
      end
    end
    -- Who holds its seats: each bot's seat points here; bots no longer listed lose theirs.
    if nb >= 0 then
      local wkey = P .. ':wbots:' .. world
      local listed = {}
      for j = 0, nb - 1 do
        local bot = ARGV[bots_at + j]
        listed[bot] = true
        redis.call('SET', P .. ':botseat:' .. bot, world, 'PX', seat_ttl)
        -- A seat taken ends the bot's reservation, which no longer counts.
        local res = redis.call('GET', P .. ':botres:' .. bot)
        if res then
          local rw, rid = string.match(res, '^(.*)|(.*)|%d+$')
          if rw == world then
            redis.call('ZREM', P .. ':res:' .. world, rid)
            redis.call('DEL', P .. ':botres:' .. bot)
          end
        end
      end
      for _, bot in ipairs(redis.call('SMEMBERS', wkey)) do
        if not listed[bot] and redis.call('GET', P .. ':botseat:' .. bot) == world then
          redis.call('DEL', P .. ':botseat:' .. bot)
        end
      end
      redis.call('DEL', wkey)
      if nb > 0 then
        for j = 0, nb - 1 do
          redis.call('SADD', wkey, ARGV[bots_at + j])
        end
        redis.call('PEXPIRE', wkey, seat_ttl)
      end
    end
    note_used(P, world, tonumber(occ) + live_reservations(P, world), capacity)
  end
end

-- Placements this server holds but did not report: unloaded, or never loaded.
local placed = {}
for _, world in ipairs(redis.call('SMEMBERS', P .. ':sw:' .. sid)) do
  if not reported[world] then
    local current = redis.call('HGET', P .. ':placement', world)
    if not current then
      redis.call('SREM', P .. ':sw:' .. sid, world)
    else
      local ps, pf, at = split_placement(current)
      if ps ~= sid then
        redis.call('SREM', P .. ':sw:' .. sid, world)
      elseif draining or (at + grace < NOW and live_reservations(P, world) == 0) then
        forget(P, world, sid)
      else
        table.insert(placed, world)
        table.insert(placed, int(pf))
      end
    end
  end
end
return {'ok', fences, evict, placed, redis.call('GET', P .. ':fence') or '0'}
