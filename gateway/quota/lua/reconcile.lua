-- reconcile: add spend that a fail_open replica charged locally while Redis was away.
-- ARGV[2] = {"now", "bid": batch id, "items": [[scope, window spec, bucket, micros], ...]}.
-- A batch is applied once: a retry whose first reply was lost changes nothing.

local req = cjson.decode(ARGV[2])
if not redis.call('SET', PREFIX .. 'recon:' .. req.bid, 1, 'NX', 'EX', 86400) then return 0 end
local now = clock(req.now)
for _, item in ipairs(req.items) do
  local scope, spec, bucket, amount = item[1], item[2], item[3], item[4]
  local key = spend_key(scope, spec, bucket)
  charge(key, spec, amount, now)
  local kind = parse_window(spec)
  if kind ~= 'rolling' then
    local n = tonumber(string.sub(bucket, 2))
    local reset
    if kind == 'day' then
      reset = (n + 1) * DAY
    else
      local y, m = math.floor(n / 12), n % 12 + 2
      if m == 13 then y, m = y + 1, 1 end
      reset = days_from_civil(y, m, 1) * DAY
    end
    touch_spend(key, spec, reset, now)
  end
end
return #req.items
