-- Where a world is placed and how many of its seats are in use.
-- ARGV: prefix, world, now (ms). Returns {} or {server, fence, used}.
local P, world, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local current = redis.call('HGET', P .. ':placement', world)
if not current then return {} end
local ps, pf = split_placement(current)
local used = tonumber(redis.call('HGET', P .. ':occ', world) or '0') + live_reservations(P, world, now)
return {ps, int(pf), int(used)}
