-- config: write one scope's limit fields as the admin. ARGV[2] = {"scope", "set": {field:
-- value}, "del": [field, ...]}. Returns the number of fields deleted that existed.

local req = cjson.decode(ARGV[2])
local scope = req.scope
local src = PREFIX .. 'src:' .. scope
local deleted = 0
for _, name in ipairs(req.del) do
  deleted = deleted + redis.call('HDEL', cfg_key(scope), name)
  redis.call('HDEL', src, name)
end
for name, value in pairs(req.set) do
  redis.call('HSET', cfg_key(scope), name, value)
  redis.call('HSET', src, name, 'admin')
end
if redis.call('EXISTS', cfg_key(scope)) == 1 then
  redis.call('SADD', KEYS[1], scope)
else
  redis.call('SREM', KEYS[1], scope)
  redis.call('DEL', src)
end
return deleted
