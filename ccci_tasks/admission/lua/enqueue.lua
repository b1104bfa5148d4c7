-- ARGV: 3 run_id, 4.. field/value pairs. Returns {1, now} if stored and appended, {0, HGETALL}
-- if the run was already known.
local id = ARGV[3]
local key = spec_prefix .. id
if redis.call('EXISTS', key) == 1 then
  return {0, redis.call('HGETALL', key)}
end
redis.call('HSET', key, 'enqueued_at', tostring(now), unpack(ARGV, 4))
redis.call('RPUSH', pending, id)
return {1, tostring(now)}
