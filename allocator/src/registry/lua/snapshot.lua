-- Everything a replica needs to decide: the registry's time, servers, how many worlds each
-- holds, and the worlds with a free seat (full ones are only counted). ARGV: prefix.
-- Returns {{now, resume_ms, started_ms, last heartbeat ms}, servers (id, json, ...), counts (n per server, same
-- order), open (world, used, ...), placements (one per open world, same order)}.
local P = ARGV[1]
redis.call('SET', P .. ':started', int(NOW), 'NX')
local servers = redis.call('HGETALL', P .. ':servers')
local counts = {}
for k = 1, #servers, 2 do
  table.insert(counts, redis.call('SCARD', P .. ':sw:' .. servers[k]))
end
local open = redis.call('ZRANGE', P .. ':open', 0, -1, 'WITHSCORES')
local placements = {}
for k = 1, #open, 2 do
  table.insert(placements, redis.call('HGET', P .. ':placement', open[k]) or '')
end
local clock = {int(NOW), int(resumed(P)), redis.call('GET', P .. ':started') or '0', redis.call('GET', P .. ':hb_last') or '0'}
return {clock, servers, counts, open, placements}
