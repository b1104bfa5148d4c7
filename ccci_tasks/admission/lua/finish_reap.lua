-- ARGV: 3 run_id. Frees the resources of a reaped run (or a janitor hold), drops its spec.
local id = ARGV[3]
local removed = redis.call('ZREM', reaping, id)
redis.call('DEL', spec_prefix .. id)
return removed
