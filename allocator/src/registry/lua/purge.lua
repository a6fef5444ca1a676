-- Forget servers not heard from for ARGV[2] ms, and the placements they held.
-- ARGV: prefix, silence (ms). Returns how many servers were forgotten.
local P, silence = ARGV[1], tonumber(ARGV[2])
local all = redis.call('HGETALL', P .. ':servers')
local gone = 0
for k = 1, #all, 2 do
  local s = cjson.decode(all[k + 1])
  if math.max(tonumber(s.last_seen_ms), resumed(P)) + silence < NOW then
    -- Its placements go too (a crashed server never reports them again).
    for _, world in ipairs(redis.call('SMEMBERS', P .. ':sw:' .. all[k])) do
      local current = redis.call('HGET', P .. ':placement', world)
      if current and split_placement(current) == all[k] then
        forget(P, world, all[k])
      end
    end
    redis.call('HDEL', P .. ':servers', all[k])
    redis.call('DEL', P .. ':sw:' .. all[k])
    gone = gone + 1
  end
end
return gone
