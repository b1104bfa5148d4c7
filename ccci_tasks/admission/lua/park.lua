-- ARGV: 3 run_id, 4 token. The run waits for something else (its child runs): its lease and
-- resources go, its spec stays, it is listed as parked until unpark puts it back in line.
local id, token = ARGV[3], ARGV[4]
if not redis.call('ZSCORE', leases, id) then return 0 end
if redis.call('HGET', spec_prefix .. id, 'token') ~= token then return 0 end
redis.call('ZREM', leases, id)
-- it resumes where it ran (what it waits with is in that node's state root)
local ran_on = redis.call('HGET', spec_prefix .. id, 'node')
if ran_on then redis.call('HSET', spec_prefix .. id, 'pin', ran_on) end
redis.call('HDEL', spec_prefix .. id, 'token', 'started', 'holder', 'node')
redis.call('SADD', KEYS[3] .. ':parked', id)
return 1
