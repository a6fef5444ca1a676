-- Reserve one seat for a bot, placing the world first when asked — unless the bot holds a seat
-- or a live reservation already: then that one is the answer (one seat per bot).
-- ARGV: prefix, world, server, kind ("seat" | "place"), fence (for "seat"), reservation id,
--       bot, requested world ("" when none), ttl (ms), server timeout (ms), lastfence ttl (ms),
--       warm-up (ms: named worlds are not placed that long after the registry started empty),
--       deadline (ms, registry time: past it the caller gave up, and nothing is reserved)
-- Returns {"ok", fence, used}, {"held", world, server, fence}, {"held_unplaced", world},
--         {"seat_elsewhere", world}, {"live_elsewhere", server, fence} or {conflict}; "unheard"
--         when a server looks gone but the registry has heard from nobody lately.
local P, world, server, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local want_fence = tonumber(ARGV[5])
local id, bot, requested = ARGV[6], ARGV[7], ARGV[8]
local ttl, timeout, lastfence_ttl, warmup = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
-- A request that waited out its deadline (Redis was out of reach, its call queued) has been
-- answered already: reserving now would only hold a seat nobody will use.
if NOW > tonumber(ARGV[13]) then return {'late'} end

-- The registry starts counting (warm-up) when it is first used.
redis.call('SET', P .. ':started', int(NOW), 'NX')
local started = tonumber(redis.call('GET', P .. ':started'))

-- One seat per bot: a seat it holds, or a live reservation, is its answer.
local seat, rworld, rid = bot_holds(P, bot)
if rworld and requested ~= '' and rworld ~= requested and rworld ~= seat then
  -- An unused reservation elsewhere gives way to the world the bot now asks for.
  redis.call('ZREM', P .. ':res:' .. rworld, rid)
  redis.call('DEL', P .. ':botres:' .. bot)
  rworld = nil
end
local holds = seat or rworld
if holds then
  if requested ~= '' and requested ~= holds then return {'seat_elsewhere', holds} end
  local current = redis.call('HGET', P .. ':placement', holds)
  if current then
    local ps, pf = split_placement(current)
    local s = alive_server(P, ps, timeout)
    if s and s.state == 'ready' then return {'held', holds, ps, int(pf)} end
    if s then return {'moving'} end
    if silent(P, timeout) then return {'unheard'} end
  end
  -- Its world is not live anywhere: place it where asked, or tell the caller to choose.
  if kind ~= 'place' or world ~= holds then return {'held_unplaced', holds} end
end

-- Nothing is judged dead while the registry itself heard from nobody.
local unheard = silent(P, timeout)
local s = alive_server(P, server, timeout)
if not s and unheard then return {'unheard'} end
if not s or s.state ~= 'ready' then return {'server_unavailable'} end
local capacity = tonumber(s.world_capacity)

local current = redis.call('HGET', P .. ':placement', world)
local fence
if kind == 'seat' then
  if not current then return {'world_moved'} end
  local ps, pf = split_placement(current)
  if ps ~= server or pf ~= want_fence then return {'world_moved'} end
  fence = pf
else
  if current then
    local ps, pf = split_placement(current)
    if ps == server then
      fence = pf
    elseif alive_server(P, ps, timeout) then
      return {'live_elsewhere', ps, int(pf)}
    elseif unheard then
      return {'unheard'}
    else
      -- Its server stopped reporting: the world moves.
      forget(P, world, ps)
    end
  end
  if not fence then
    -- A world with a name may still be held by a server that has not reported to a registry
    -- that lost its data: wait until every server had the time to report.
    if requested ~= '' and NOW < started + warmup then return {'warming_up'} end
    if redis.call('SCARD', P .. ':sw:' .. server) >= tonumber(s.max_worlds) then return {'server_full'} end
    fence = place(P, world, server, capacity, lastfence_ttl)
  end
end

if holds then
  -- The bot's seat is kept in the world's saved state: it needs no new one.
  return {'held', world, server, int(fence)}
end

local used = tonumber(redis.call('HGET', P .. ':occ', world) or '0') + live_reservations(P, world)
if used >= capacity then
  note_used(P, world, used, capacity)
  return {'world_full'}
end
local expires = NOW + ttl
local rkey = P .. ':res:' .. world
redis.call('ZADD', rkey, expires, id)
-- The key lives as long as its longest reservation (never shortened by another replica).
if redis.call('PEXPIRETIME', rkey) < expires then
  redis.call('PEXPIREAT', rkey, expires)
end
redis.call('SET', P .. ':botres:' .. bot, world .. '|' .. id .. '|' .. int(expires), 'PXAT', expires)
note_used(P, world, used + 1, capacity)
return {'ok', int(fence), int(used + 1), int(expires)}
