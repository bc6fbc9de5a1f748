-- release: give back everything an unfinished reservation took (spend, tokens, share
-- counts; a request-per-minute count stays: the request was made). Idempotent.
-- ARGV[2] = {"now", "ret", "id"}. Returns 1 if released now, 0 otherwise.

local req = cjson.decode(ARGV[2])
local now = clock(req.now)
local id = req.id
local v = redis.call('HMGET', res_key(id), 'st', 'amt', 'tok', 'd')
if not v[1] or v[1] == 's' or v[1] == 'r' then return 0 end
local rec = cjson.decode(v[4])
if v[1] == 'a' then
  unreserve(rec, tonumber(v[2]))
  forget_queued(rec, id)
end
local tokens = tonumber(v[3])
if tokens ~= 0 then
  for _, s in ipairs(rec.t) do
    local tpm = limits_of(s).tpm
    if tpm then gcra_adjust(cell_key(s, 'tpm'), now, -tokens, tpm) end
  end
end
for _, sh in ipairs(rec.s) do
  local scope, w, slot, tier = sh[1], sh[2], sh[3], sh[4]
  local key = share_key(scope, w)
  roll(key, w, now)
  if slot_live(slot, w, now) and redis.call('HEXISTS', key, 'n@' .. I(slot)) == 1 then
    rolling_add(key, w, slot, 'n', -1)
    rolling_add(key, w, slot, tier, -1)
  end
end
finish(id, 'r', req.ret)
return 1
