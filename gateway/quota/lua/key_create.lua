-- key_create: store a client key by its SHA-256 (never the key itself).
-- ARGV[2] = {"id", "sha", "tenant", "team", "created"}. Returns 0 if the id is taken.

local req = cjson.decode(ARGV[2])
local by_id = PREFIX .. 'keyid:' .. req.id
if redis.call('EXISTS', by_id) == 1 then return 0 end
redis.call('SET', by_id, req.sha)
local fields = { 'id', req.id, 'tenant', req.tenant, 'created', F(req.created) }
if req.team ~= nil and req.team ~= cjson.null then
  table.insert(fields, 'team')
  table.insert(fields, req.team)
end
redis.call('HSET', PREFIX .. 'key:' .. req.sha, unpack(fields))
return 1
