-- Returns {now, {id, score, state, HGETALL}...} of every occupying run.
local out = {tostring(now)}
for _, pair in ipairs({{leases, 'live'}, {expired, 'expired'}, {reaping, 'reaping'}}) do
  local rows = redis.call('ZRANGE', pair[1], 0, -1, 'WITHSCORES')
  for i = 1, #rows, 2 do
    out[#out + 1] = {rows[i], rows[i + 1], pair[2], redis.call('HGETALL', spec_prefix .. rows[i])}
  end
end
return out
