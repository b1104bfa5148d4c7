-- ARGV: 3 run_id. A parked run goes first in line again. Returns 1 if it was parked.
local id = ARGV[3]
if redis.call('SREM', KEYS[3] .. ':parked', id) == 0 then return 0 end
redis.call('LPUSH', pending, id)
return 1
