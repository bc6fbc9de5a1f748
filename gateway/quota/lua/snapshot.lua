-- snapshot: every scope's limit fields plus the shared spend (spent + reserved) of each
-- capped window's current bucket, for the fail_open fallback's local mirror.
-- ARGV[2] = {"now"}. Returns JSON {"cfg": {scope: {field: value}}, "spend": [[scope, spec, bucket, used]]}.

local req = cjson.decode(ARGV[2])
local now = clock(req.now)
local cfg, spend = {}, {}
for _, scope in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = {}
  local all = redis.call('HGETALL', cfg_key(scope))
  for i = 1, #all, 2 do fields[all[i]] = all[i + 1] end
  cfg[scope] = fields
  for _, cap in ipairs(limits_of(scope).caps) do
    local spec = cap[1]
    local bucket = bucket_of(spec, now)
    local spent, reserved = spend_used(spend_key(scope, spec, bucket), spec, now)
    if spent + reserved ~= 0 then table.insert(spend, { scope, spec, bucket, spent + reserved }) end
  end
end
return cjson.encode({ cfg = cfg, spend = spend, now = now })
