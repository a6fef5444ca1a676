-- Cancel a reservation. ARGV: prefix, world, reservation id, bot. Returns 1 if it existed.
local P, world, id, bot = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local removed = redis.call('ZREM', P .. ':res:' .. world, id)
local res = redis.call('GET', P .. ':botres:' .. bot)
if res and res == world .. '|' .. id .. '|' .. string.match(res, '|(%d+)$') then
  redis.call('DEL', P .. ':botres:' .. bot)
end
local current = redis.call('HGET', P .. ':placement', world)
if removed == 1 and current then
  local ps = split_placement(current)
  local raw = redis.call('HGET', P .. ':servers', ps)
  if raw then
    local occ = tonumber(redis.call('HGET', P .. ':occ', world) or '0')
    note_used(P, world, occ + live_reservations(P, world), tonumber(cjson.decode(raw).world_capacity))
  end
end
return removed
