-- The prologue of every admission script (``scripts.py`` puts it in front of each).
-- KEYS: 1 leases, 2 expired, 3 pending, 4 reaping, 5 fence counter.
-- ARGV: 1 now ('' = the server clock), 2 run-spec key prefix; each script's own from 3.
-- Resources are wire strings: slot, sweep, canon:<recipe>, infra:<app>:shared|excl.
local leases, expired, pending, reaping, fence = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local spec_prefix = ARGV[2]
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end

-- leases whose expiry passed move to the expired zset for the janitor; they keep their
-- resources until finish_reap
local dead = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'WITHSCORES')
for i = 1, #dead, 2 do
  redis.call('ZADD', expired, dead[i + 1], dead[i])
end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', leases, '-inf', now) end

local function occupying_ids()
  local out = {}
  for _, set in ipairs({leases, expired, reaping}) do
    for _, id in ipairs(redis.call('ZRANGE', set, 0, -1)) do out[#out + 1] = id end
  end
  return out
end

local function split(s)
  local t = {}
  for r in string.gmatch(s or '', '[^,]+') do t[#t + 1] = r end
  return t
end

local function conflict(a, b)
  if a == 'slot' or b == 'slot' then return false end
  if a == b then return string.sub(a, -7) ~= ':shared' end
  local pa = string.match(a, '^(infra:.+):%a+$')
  local pb = string.match(b, '^(infra:.+):%a+$')
  return pa ~= nil and pa == pb
end
