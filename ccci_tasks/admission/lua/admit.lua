-- ARGV: 3 ttl, 4 start grace, 5 max_tests, 6.. live apps ('cold:<hex>' / 'warm:<recipe>').
-- Returns {{run_id, HGETALL spec}, ...} of the admitted runs.
local grace, max_tests = tonumber(ARGV[4]), tonumber(ARGV[5])
local held, slots_used = {}, 0
local hexes = {}
for _, id in ipairs(occupying_ids()) do
  local res = split(redis.call('HGET', spec_prefix .. id, 'resources'))
  for _, r in ipairs(res) do
    held[#held + 1] = r
    if r == 'slot' then slots_used = slots_used + 1 end
  end
  hexes[string.sub(id, 1, 6)] = true
end
-- live apps no occupying run explains
for i = 6, #ARGV do
  local kind, name = string.match(ARGV[i], '^(%a+):(.+)$')
  if kind == 'cold' and not hexes[name] then
    slots_used = slots_used + 1
  elseif kind == 'warm' then
    local canon = 'canon:' .. name
    local explained = false
    for _, r in ipairs(held) do if r == canon then explained = true end end
    if not explained then
      slots_used = slots_used + 1
      held[#held + 1] = canon
    end
  end
end

local out = {}
-- the resources of runs that wait earlier in the FIFO: a later run may not take one that
-- conflicts with them, so a waiting exclusive request is not starved by a stream of shared
-- ones (and the reverse)
local reserved = {}
for _, id in ipairs(redis.call('LRANGE', pending, 0, -1)) do
  local key = spec_prefix .. id
  if redis.call('EXISTS', key) == 0 or redis.call('ZSCORE', leases, id)
      or redis.call('ZSCORE', expired, id) or redis.call('ZSCORE', reaping, id) then
    redis.call('LREM', pending, 1, id)  -- forgotten, or already admitted: drop the entry
  else
    local want = split(redis.call('HGET', key, 'resources'))
    local fits = true
    local needs_slot = false
    for _, r in ipairs(want) do
      if r == 'slot' then needs_slot = true end
      for _, h in ipairs(held) do
        if conflict(r, h) then fits = false end
      end
      for _, h in ipairs(reserved) do
        if conflict(r, h) then fits = false end
      end
    end
    if needs_slot and slots_used >= max_tests then fits = false end
    if not fits then
      for _, r in ipairs(want) do reserved[#reserved + 1] = r end
    end
    if fits then
      local token = redis.call('INCR', fence)
      local floor = math.floor(now * 1000)
      if token < floor then
        redis.call('SET', fence, floor)
        token = floor
      end
      redis.call('HSET', key, 'token', token, 'started', 0)
      redis.call('ZADD', leases, now + grace, id)
      redis.call('LREM', pending, 1, id)
      for _, r in ipairs(want) do held[#held + 1] = r end
      if needs_slot then slots_used = slots_used + 1 end
      out[#out + 1] = {id, redis.call('HGETALL', key)}
    end
  end
end
return out
