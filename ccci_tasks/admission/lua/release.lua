-- ARGV: 3 run_id, 4 token ('' = any), 5 forget ('1': the spec goes too). Returns 1 if a live
-- lease was dropped, else 0 and nothing changed. ``end`` forgets in the same step, so a stale
-- end never frees (or forgets) what the janitor is still cleaning up (R13.1).
local id, token, forget = ARGV[3], ARGV[4], ARGV[5]
if not redis.call('ZSCORE', leases, id) then return 0 end
if token ~= '' and redis.call('HGET', spec_prefix .. id, 'token') ~= token then return 0 end
redis.call('ZREM', leases, id)
if forget == '1' then
  redis.call('DEL', spec_prefix .. id)
else
  redis.call('HDEL', spec_prefix .. id, 'token', 'started', 'holder', 'node')
end
return 1
