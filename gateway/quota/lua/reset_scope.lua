-- reset_scope: forgive a scope's spend in the current bucket of each capped window and
-- clear its rate-limit and share counters. In-flight reservations keep their hold.
-- ARGV[2] = {"now", "scope"}.

local req = cjson.decode(ARGV[2])
local now = clock(req.now)
local scope = req.scope
local l = limits_of(scope)
for _, cap in ipairs(l.caps) do
  local spec = cap[1]
  local key = spend_key(scope, spec, (bucket_of(spec, now)))
  local kind = parse_window(spec)
  if kind == 'rolling' then
    local all = redis.call('HGETALL', key)
    for i = 1, #all, 2 do
      if string.match(all[i], '^spent@') or all[i] == 'T:spent' then redis.call('HDEL', key, all[i]) end
    end
  elseif redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'spent', 0)
  end
end
redis.call('DEL', cell_key(scope, 'rpm'), cell_key(scope, 'tpm'))
for _, sh in ipairs(l.shares) do
  redis.call('DEL', share_key(scope, sh[2]))
end
return 1
