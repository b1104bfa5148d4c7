-- ARGV: 3 ttl, 4 run_id, 5 token, 6 holder ('' = unchanged). Returns 1 if the run holds a
-- live lease with that token (then extended to now + ttl, which starts the TTL at the first
-- renewal, and the holder "<node> <pid> <start>" recorded), else 0.
local ttl, id, token, holder = tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local score = redis.call('ZSCORE', leases, id)
if not score or tonumber(score) <= now then return 0 end
local key = spec_prefix .. id
if redis.call('HGET', key, 'token') ~= token then return 0 end
if holder ~= nil and holder ~= '' then redis.call('HSET', key, 'holder', holder) end
local started = redis.call('HGET', key, 'started')
if started == '1' and tonumber(score) > now + ttl then return 1 end
redis.call('ZADD', leases, now + ttl, id)
redis.call('HSET', key, 'started', 1)
return 1
