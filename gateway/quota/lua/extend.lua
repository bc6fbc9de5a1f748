-- extend: hold `extra` more micro-dollars for a live reservation (a long stream) and push
-- its deadline out, all or nothing. ARGV[2] = {"now", "ret", "id", "extra", "ttl"}.
-- Returns 1 if extended, 0 if a cap cannot afford it or the reservation is not live.

local req = cjson.decode(ARGV[2])
local now = clock(req.now)
local id, extra = req.id, req.extra
local key = res_key(id)
local v = redis.call('HMGET', key, 'st', 'dl', 'd')
if v[1] ~= 'a' or tonumber(v[2]) <= now then return 0 end
local rec = cjson.decode(v[3])
if extra > 0 then
  for _, c in ipairs(rec.c) do
    local limit = tonumber(redis.call('HGET', cfg_key(c[3]), 'cap:' .. c[2]))
    if limit then
      local spent, reserved = spend_used(c[1], c[2], now)
      if spent + reserved + extra > limit then return 0 end
    end
  end
  for _, c in ipairs(rec.c) do
    redis.call('HINCRBY', c[1], 'reserved', I(extra))
  end
  redis.call('HINCRBY', key, 'amt', I(extra))
end
local deadline = now + req.ttl
for _, scope in ipairs(rec.z) do
  redis.call('ZADD', queue_key(scope), F(deadline), id)
end
redis.call('HSET', key, 'dl', F(deadline))
redis.call('PEXPIRE', key, I((req.ttl + req.ret) * 1000))
return 1
