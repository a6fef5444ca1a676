-- Reserve one seat, placing the world first when asked.
-- ARGV: prefix, world, server, kind ("seat" | "place"), fence (for "seat"), reservation id,
--       now (ms), expiry (ms), server timeout (ms)
-- Returns {"ok", fence, used} or {conflict} or {"live_elsewhere", server, fence}.
local P, world, server, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local want_fence = tonumber(ARGV[5])
local id, now_s = ARGV[6], ARGV[7]
local now, expires, timeout = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])

local s = alive_server(P, server, now, timeout)
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
    elseif alive_server(P, ps, now, timeout) then
      return {'live_elsewhere', ps, int(pf)}
    else
      -- Its server stopped reporting: the world moves.
      forget(P, world, ps)
    end
  end
  if not fence then
    if redis.call('SCARD', P .. ':sw:' .. server) >= tonumber(s.max_worlds) then return {'server_full'} end
    fence = place(P, world, server, now_s, 0, capacity)
  end
end

local used = tonumber(redis.call('HGET', P .. ':occ', world) or '0') + live_reservations(P, world, now)
if used >= capacity then
  note_used(P, world, used, capacity)
  return {'world_full'}
end
local rkey = P .. ':res:' .. world
redis.call('ZADD', rkey, expires, id)
-- The key lives as long as its longest reservation (never shortened by another replica).
if redis.call('PEXPIRETIME', rkey) < expires then
  redis.call('PEXPIREAT', rkey, expires)
end
note_used(P, world, used + 1, capacity)
return {'ok', int(fence), int(used + 1)}
