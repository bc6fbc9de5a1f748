-- key_revoke: delete a client key by id. ARGV[2] = {"id"}. Returns the key's SHA-256, or false if it did not exist.

local req = cjson.decode(ARGV[2])
local by_id = PREFIX .. 'keyid:' .. req.id
local sha = redis.call('GET', by_id)
if not sha then return false end
redis.call('DEL', by_id, PREFIX .. 'key:' .. sha)
return sha
