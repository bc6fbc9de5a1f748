-- reconcile: add spend that a fail_open replica charged locally while Redis was away.
-- ARGV[2] = {"now", "items": [[scope, window spec, bucket, micros], ...]}.

local req = cjson.decode(ARGV[2])
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
