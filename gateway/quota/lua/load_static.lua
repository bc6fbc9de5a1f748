-- load_static: make the policy file's limits the static layer. A field an admin wrote is
-- never overwritten; a static field the policy no longer has is removed.
-- ARGV[2] = {"desired": {scope: {field: value}}}.

local req = cjson.decode(ARGV[2])
local desired = req.desired
local touched = {}
for _, scope in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local src = PREFIX .. 'src:' .. scope
  local all = redis.call('HGETALL', src)
  for i = 1, #all, 2 do
    local name, who = all[i], all[i + 1]
    if who == 'static' and (desired[scope] == nil or desired[scope][name] == nil) then
      redis.call('HDEL', cfg_key(scope), name)
      redis.call('HDEL', src, name)
      touched[scope] = true
    end
  end
end
for scope, fields in pairs(desired) do
  local src = PREFIX .. 'src:' .. scope
  for name, value in pairs(fields) do
    if redis.call('HGET', src, name) ~= 'admin' then
      redis.call('HSET', cfg_key(scope), name, value)
      redis.call('HSET', src, name, 'static')
    end
  end
  touched[scope] = true
end
for scope, _ in pairs(touched) do
  if redis.call('EXISTS', cfg_key(scope)) == 1 then
    redis.call('SADD', KEYS[1], scope)
  else
    redis.call('SREM', KEYS[1], scope)
    redis.call('DEL', PREFIX .. 'src:' .. scope)
  end
end
return 1
