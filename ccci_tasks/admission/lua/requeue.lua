-- ARGV: 3 run_id, 4 token. A launch failed: the lease goes and the run is first in line again.
local id, token = ARGV[3], ARGV[4]
if not redis.call('ZSCORE', leases, id) then return 0 end
if redis.call('HGET', spec_prefix .. id, 'token') ~= token then return 0 end
redis.call('ZREM', leases, id)
redis.call('HDEL', spec_prefix .. id, 'token', 'started', 'holder', 'node')
redis.call('LPUSH', pending, id)
return 1
