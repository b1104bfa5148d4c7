-- ARGV: 3 ttl, 4 start grace, 5 max_tests, 6 this node, 7 seconds after which a node without
-- a beat is lost, 8 node hash prefix, 9 nodes zset, 10.. this node's live apps
-- ('cold:<hex>' / 'warm:<recipe>').
-- Admission for one node (R15): runs pinned to it, and runs pinned to none while no other
-- live node has more free slots. MAX_TESTS counts per node. Returns {{run_id, HGETALL spec},
-- ...} of the runs admitted here; each gets this node in its spec.
local grace, max_tests = tonumber(ARGV[4]), tonumber(ARGV[5])
local me, node_ttl, node_prefix, nodes_key = ARGV[6], tonumber(ARGV[7]), ARGV[8], ARGV[9]

-- the live nodes and what each publishes; this node's live apps are the caller's, fresh
local live_of, max_of = {}, {}
local up = redis.call('ZRANGEBYSCORE', nodes_key, now - node_ttl, '+inf')
local known = redis.call('ZCARD', nodes_key) > 0
local me_up = false
for _, n in ipairs(up) do
  if n == me then
    me_up = true
  else
    local h = redis.call('HMGET', node_prefix .. n, 'max_tests', 'live')
    max_of[n] = tonumber(h[1]) or 1
    live_of[n] = split(h[2])
  end
end
-- a host whose runs worker does not beat while others do runs nothing (it has no worker)
if known and not me_up then return {} end
local mine = {}
for i = 10, #ARGV do mine[#mine + 1] = ARGV[i] end
live_of[me], max_of[me] = mine, max_tests
redis.call('HSET', node_prefix .. me, 'live', table.concat(mine, ','))

local held, used = {}, {}
for n, _ in pairs(max_of) do used[n] = 0 end
local hexes = {}
for _, id in ipairs(occupying_ids()) do
  local key = spec_prefix .. id
  local res = split(redis.call('HGET', key, 'resources'))
  -- a run admitted before nodes were recorded counts on this node
  local n = redis.call('HGET', key, 'node') or me
  for _, r in ipairs(res) do
    held[#held + 1] = r
    if r == 'slot' and used[n] ~= nil then used[n] = used[n] + 1 end
  end
  hexes[string.sub(id, 1, 6)] = true
end
-- live apps no occupying run explains, on each node
for n, apps in pairs(live_of) do
  for _, app in ipairs(apps) do
    local kind, name = string.match(app, '^(%a+):(.+)$')
    if kind == 'cold' and not hexes[name] then
      used[n] = used[n] + 1
    elseif kind == 'warm' then
      local canon = 'canon:' .. name
      local explained = false
      for _, r in ipairs(held) do if r == canon then explained = true end end
      if not explained then
        used[n] = used[n] + 1
        held[#held + 1] = canon  -- the canonical lock is one per recipe, whichever node
      end
    end
  end
end

local function most_free_here()
  local free = max_of[me] - used[me]
  for n, m in pairs(max_of) do
    if n ~= me and m - used[n] > free then return false end
  end
  return true
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
    local pin = redis.call('HGET', key, 'pin')
    local fits = (not pin) or pin == me
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
    if needs_slot and used[me] >= max_tests then fits = false end
    if fits and needs_slot and not pin and not most_free_here() then fits = false end
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
      redis.call('HSET', key, 'token', token, 'started', 0, 'node', me)
      redis.call('ZADD', leases, now + grace, id)
      redis.call('LREM', pending, 1, id)
      for _, r in ipairs(want) do held[#held + 1] = r end
      if needs_slot then used[me] = used[me] + 1 end
      out[#out + 1] = {id, redis.call('HGETALL', key)}
    end
  end
end
return out
