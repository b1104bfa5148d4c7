-- Returns {{run_id, HGETALL spec}, ...} of every expired lease of a run that had started,
-- once; they move to the reaping zset (scored by hand-out time) and keep their resources
-- until finish_reap. A run whose first step never started left nothing behind: it goes back
-- to the head of the FIFO (its token is dropped, so a late first step is fenced off).
local out = {}
for _, id in ipairs(redis.call('ZRANGE', expired, 0, -1)) do
  local key = spec_prefix .. id
  if redis.call('HGET', key, 'started') == '0' then
    redis.call('HDEL', key, 'token', 'started', 'holder', 'node')
    redis.call('LPUSH', pending, id)
  else
    out[#out + 1] = {id, redis.call('HGETALL', key)}
    redis.call('ZADD', reaping, now, id)
  end
end
redis.call('DEL', expired)
return out
