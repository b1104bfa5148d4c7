-- ARGV: 3 hold id, 4.. field/value pairs. The janitor holds resources while it cleans up.
local id = ARGV[3]
redis.call('HSET', spec_prefix .. id, unpack(ARGV, 4))
redis.call('ZADD', reaping, now, id)
return 1
