-- Shared helpers, prepended to every quota script (Redis scripts cannot include files).
-- Mirrors gateway/quota/windows.py: keep the two in step.
--
-- Every key is PREFIX .. something, and PREFIX starts with the deployment's hash tag
-- ("{gw}:"), so all keys of one call live in the slot of KEYS[1] (Redis Cluster safe).

local PREFIX = ARGV[1]
local EPS = 1e-9
local RATE_PERIOD = 60
local ROLLING_SLOTS = 60
local DAY = 86400

local function I(x)  -- integers as text without "1e+15" surprises
  return string.format('%d', x)
end

local function F(x)
  return string.format('%.6f', x)
end

-- Redis' TIME, read once per script run: a `_many` batch runs atomically, at one instant
local script_time = nil
local function clock(given)
  if given ~= nil and given ~= cjson.null then return tonumber(given) end
  if script_time == nil then
    local t = redis.call('TIME')
    script_time = tonumber(t[1]) + tonumber(t[2]) / 1e6
  end
  return script_time
end

-- ---- calendar (proleptic Gregorian, UTC) ---------------------------------------------

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- "day" | "month" | "rolling:N" -> kind, seconds
local function parse_window(spec)
  if spec == 'day' or spec == 'month' then return spec, 0 end
  return 'rolling', tonumber(string.sub(spec, 9))
end

-- bucket id and (for calendar windows) the reset time of the bucket `now` falls in
local function compute_bucket(spec, now)
  local kind = parse_window(spec)
  if kind == 'day' then
    local d = math.floor(now / DAY)
    return 'd' .. I(d), (d + 1) * DAY
  elseif kind == 'month' then
    local y, m = civil_from_days(math.floor(now / DAY))
    local ny, nm = y, m + 1
    if nm == 13 then ny, nm = y + 1, 1 end
    return 'm' .. I(y * 12 + m - 1), days_from_civil(ny, nm, 1) * DAY
  end
  return 'r', nil
end

-- the same, worked out once per window and instant in a script run (a batch shares `now`)
local buckets = {}
local function bucket_of(spec, now)
  local hit = buckets[spec]
  if hit ~= nil and hit[1] == now then return hit[2], hit[3] end
  local bucket, reset = compute_bucket(spec, now)
  buckets[spec] = { now, bucket, reset }
  return bucket, reset
end

-- ---- rolling slots -------------------------------------------------------------------

local function slot_seconds(w) return math.max(1, math.ceil(w / ROLLING_SLOTS)) end
local function slot_count(w) return math.ceil(w / slot_seconds(w)) end
local function slot_index(now, w) return math.floor(now / slot_seconds(w)) end

-- Drop the slots (fields "<name>@<idx>") that left the window, keeping "T:<name>" totals.
local function roll(key, w, now)
  local cutoff = slot_index(now, w) - slot_count(w)
  local lo = tonumber(redis.call('HGET', key, 'lo'))
  if lo ~= nil and lo > cutoff then return end
  local all = redis.call('HGETALL', key)
  if #all == 0 then return end  -- never create a key (and leak it without a TTL) by reading
  for i = 1, #all, 2 do
    local name, idx = string.match(all[i], '^(.*)@(%-?%d+)$')
    if name ~= nil and tonumber(idx) <= cutoff then
      redis.call('HINCRBY', key, 'T:' .. name, -tonumber(all[i + 1]))
      redis.call('HDEL', key, all[i])
    end
  end
  redis.call('HSET', key, 'lo', I(cutoff + 1))
end

local function slot_live(slot, w, now)
  return slot > slot_index(now, w) - slot_count(w)
end

local function rolling_add(key, w, slot, name, amount)
  redis.call('HINCRBY', key, name .. '@' .. I(slot), I(amount))
  redis.call('HINCRBY', key, 'T:' .. name, I(amount))
end

-- when the oldest live count of `name` leaves the window (one slot ahead if none)
local function drop_time(key, w, name, now)
  local all = redis.call('HGETALL', key)
  local oldest = nil
  for i = 1, #all, 2 do
    local n, idx = string.match(all[i], '^(.*)@(%-?%d+)$')
    if n == name and tonumber(all[i + 1]) ~= 0 then
      idx = tonumber(idx)
      if slot_live(idx, w, now) and (oldest == nil or idx < oldest) then oldest = idx end
    end
  end
  if oldest == nil then return (slot_index(now, w) + 1) * slot_seconds(w) end
  return (oldest + slot_count(w)) * slot_seconds(w)
end

-- ---- keys ----------------------------------------------------------------------------

local function cfg_key(scope) return PREFIX .. 'cfg:' .. scope end
local function spend_key(scope, spec, bucket) return PREFIX .. 'sp:' .. scope .. '|' .. spec .. '|' .. bucket end
local function cell_key(scope, kind) return PREFIX .. 'rl:' .. scope .. '|' .. kind end
local function share_key(scope, w) return PREFIX .. 'sh:' .. scope .. '|' .. I(w) end
local function queue_key(scope) return PREFIX .. 'rq:' .. scope end
local function res_key(id) return PREFIX .. 'res:' .. id end

-- ---- config --------------------------------------------------------------------------

local limits_cache = {}

local function limits_of(scope)
  local found = limits_cache[scope]
  if found ~= nil then return found end
  found = { caps = {}, shares = {}, rpm = nil, tpm = nil }
  local all = redis.call('HGETALL', cfg_key(scope))
  for i = 1, #all, 2 do
    local name, value = all[i], all[i + 1]
    if string.sub(name, 1, 4) == 'cap:' then
      table.insert(found.caps, { string.sub(name, 5), tonumber(value) })
    elseif string.sub(name, 1, 6) == 'share:' then
      local tier, w = string.match(string.sub(name, 7), '^(.*):(%d+)$')
      table.insert(found.shares, { tier, tonumber(w), tonumber(value) })
    elseif name == 'rpm' then
      found.rpm = tonumber(value)
    elseif name == 'tpm' then
      found.tpm = tonumber(value)
    end
  end
  limits_cache[scope] = found
  return found
end

-- ---- spend counters ------------------------------------------------------------------

-- expiries are relative to the script's `now`, so a caller-supplied clock works too
local function touch_spend(key, spec, reset, now)
  if reset ~= nil then
    local grace = spec == 'month' and 35 * DAY or 3 * DAY
    redis.call('PEXPIRE', key, I(math.max(1, reset + grace - now) * 1000))
  else
    local _, w = parse_window(spec)
    redis.call('PEXPIRE', key, I((2 * w + DAY) * 1000))
  end
end

-- spent and reserved micro-dollars of one counter; rolling counters are rolled first
local function spend_used(key, spec, now)
  local kind, w = parse_window(spec)
  local spent_field = 'spent'
  if kind == 'rolling' then
    roll(key, w, now)
    spent_field = 'T:spent'
  end
  local v = redis.call('HMGET', key, spent_field, 'reserved')
  return tonumber(v[1]) or 0, math.max(0, tonumber(v[2]) or 0)
end

local function spend_resets_at(key, spec, now)
  local kind, w = parse_window(spec)
  if kind == 'rolling' then return drop_time(key, w, 'spent', now) end
  local _, reset = bucket_of(spec, now)
  return reset
end

-- add actual spend: calendar counters in their own bucket, rolling ones in the current slot
local function charge(key, spec, amount, now)
  if amount == 0 then return end
  local kind, w = parse_window(spec)
  if kind == 'rolling' then
    roll(key, w, now)
    rolling_add(key, w, slot_index(now, w), 'spent', amount)
    touch_spend(key, spec, nil, now)
  else
    redis.call('HINCRBY', key, 'spent', I(amount))
  end
end

-- ---- GCRA ----------------------------------------------------------------------------

local function gcra(key, now, cost, limit)
  local interval = RATE_PERIOD / limit
  local tat = tonumber(redis.call('GET', key)) or now
  local base = math.max(tat, now)
  local new_tat = base + cost * interval
  if new_tat - now <= RATE_PERIOD + EPS then
    local remaining = math.floor((RATE_PERIOD - (new_tat - now)) / interval + EPS)
    return { ok = true, tat = new_tat, retry = 0, remaining = math.max(0, remaining), reset = new_tat - now }
  end
  local retry = RATE_PERIOD
  if cost <= limit then retry = new_tat - RATE_PERIOD - now end
  local remaining = math.floor((RATE_PERIOD - (base - now)) / interval + EPS)
  return { ok = false, tat = base, retry = retry, remaining = math.max(0, remaining), reset = base - now }
end

local function gcra_store(key, tat, now)
  redis.call('SET', key, F(tat), 'PX', I(math.ceil((tat - now) * 1000) + 1000))
end

local function gcra_adjust(key, now, delta, limit)
  local tat = tonumber(redis.call('GET', key)) or now
  local new_tat = math.max(math.max(tat, now) + delta * (RATE_PERIOD / limit), now)
  gcra_store(key, new_tat, now)
end

-- ---- reservations --------------------------------------------------------------------

-- give back an active reservation's held amount in every counter it touched
local function unreserve(rec, amount)
  for _, c in ipairs(rec.c) do
    redis.call('HINCRBY', c[1], 'reserved', I(-amount))
  end
end

local function forget_queued(rec, id)
  for _, scope in ipairs(rec.z) do
    redis.call('ZREM', queue_key(scope), id)
  end
end

local function finish(id, state, retention)
  local key = res_key(id)
  redis.call('HSET', key, 'st', state)
  if state ~= 'x' then
    -- settled or released: only the state is read again (idempotent repeats), so the
    -- record shrinks to it; an expired one keeps its data for a late settle
    redis.call('HDEL', key, 'amt', 'tok', 'dl', 'd')
  end
  redis.call('PEXPIRE', key, I(retention * 1000))
end

-- expire reservations of `scope` whose deadline passed; `retention` keeps them for late settles.
-- A queue drained up to `now` stays drained for the rest of the script run at that `now`.
local drained = {}
local function sweep(scope, now, retention)
  if drained[scope] == now then return end
  local ids = redis.call('ZRANGEBYSCORE', queue_key(scope), '-inf', F(now), 'LIMIT', 0, 100)
  if #ids < 100 then drained[scope] = now end
  for _, id in ipairs(ids) do
    local v = redis.call('HMGET', res_key(id), 'st', 'amt', 'd')
    if v[1] == 'a' then
      local rec = cjson.decode(v[3])
      unreserve(rec, tonumber(v[2]))
      forget_queued(rec, id)
      finish(id, 'x', retention)
    else
      redis.call('ZREM', queue_key(scope), id)
    end
  end
end
