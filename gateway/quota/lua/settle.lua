-- settle: replace reservations by their actual cost. Idempotent.
-- ARGV[2] = {"now", "ret", "items": [[reservation id, actual micros, actual tokens], ...]}
-- Returns JSON: one outcome per item: settled | late | duplicate | released | unknown.

local req = cjson.decode(ARGV[2])
local now = clock(req.now)
local out = {}
for _, item in ipairs(req.items) do
  local id, actual, tokens = item[1], item[2], item[3]
  local v = redis.call('HMGET', res_key(id), 'st', 'amt', 'tok', 'd')
  if not v[1] then
    table.insert(out, 'unknown')
  elseif v[1] == 's' then
    table.insert(out, 'duplicate')
  elseif v[1] == 'r' then
    table.insert(out, 'released')
  else
    local rec = cjson.decode(v[4])
    local active = v[1] == 'a'
    for _, c in ipairs(rec.c) do
      if active then redis.call('HINCRBY', c[1], 'reserved', I(-tonumber(v[2]))) end
      charge(c[1], c[2], actual, now)
      if c[4] ~= 0 then touch_spend(c[1], c[2], c[4], now) end
    end
    local delta = tokens - tonumber(v[3])
    if delta ~= 0 then
      for _, s in ipairs(rec.t) do
        local tpm = limits_of(s).tpm
        if tpm then gcra_adjust(cell_key(s, 'tpm'), now, delta, tpm) end
      end
    end
    if active then forget_queued(rec, id) end
    finish(id, 's', req.ret)
    table.insert(out, active and 'settled' or 'late')
  end
end
return cjson.encode(out)
