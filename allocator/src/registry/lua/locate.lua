-- Where a world is placed, how many of its seats are in use, and where a bot holds a seat or a
-- live reservation. ARGV: prefix, world ("" for none), bot ("" for none).
-- Returns {server, fence, used, seat world, reservation world} ("" for what is not there).
local P, world, bot = ARGV[1], ARGV[2], ARGV[3]
local server, fence, used = '', '', ''
if world ~= '' then
  local current = redis.call('HGET', P .. ':placement', world)
  if current then
    local ps, pf = split_placement(current)
    server, fence = ps, int(pf)
    used = int(tonumber(redis.call('HGET', P .. ':occ', world) or '0') + live_reservations(P, world))
  end
end
local seat, rworld = '', ''
if bot ~= '' then
  local s, r = bot_holds(P, bot)
  seat, rworld = s or '', r or ''
end
return {server, fence, used, seat, rworld}
