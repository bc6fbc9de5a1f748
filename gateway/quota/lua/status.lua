-- status: spend of one scope in the current bucket of one window, after sweeping its
-- expired reservations. ARGV[2] = {"now", "ret", "scope", "spec"}.
-- Returns JSON [spent, reserved, limit or null, resets_at].

local req = cjson.decode(ARGV[2])
local now = clock(req.now)
sweep(req.scope, now, req.ret)
local bucket = bucket_of(req.spec, now)
local key = spend_key(req.scope, req.spec, bucket)
local spent, reserved = spend_used(key, req.spec, now)
local limit = tonumber(redis.call('HGET', cfg_key(req.scope), 'cap:' .. req.spec))
return cjson.encode({ spent, reserved, limit or cjson.null, spend_resets_at(key, req.spec, now) })
