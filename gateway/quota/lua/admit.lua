-- admit: rate limits, spend caps and share quotas for one request, decided and reserved
-- atomically. ARGV[2] = {"now", "ttl", "id", "ret", "rs": [request scope keys],
-- "c": [[model scope, provider scope, tier, worst-case micros, tokens], ...]}
-- Returns JSON: {"a": 1|0, "i": candidate index, "s": [[index, reason]], "d": denial,
-- "rq": [limit, remaining, reset] for requests, "tk": the same for tokens}.

local req = cjson.decode(ARGV[2])

-- 0. idempotent: a retried call (its reply lost on the way back) gets the first decision
-- again instead of reserving a second time under the same reservation id
local earlier = redis.call('HGET', res_key(req.id), 'reply')
if earlier then return earlier end

local now = clock(req.now)
local rs, cands, retention = req.rs, req.c, req.ret

local function offer(t, limit, r)
  if t == nil or r.remaining < t[2] or (r.remaining == t[2] and r.reset > t[3]) then
    return { limit, r.remaining, r.reset }
  end
  return t
end

-- 1. give back what expired reservations still hold in every capped scope we may touch
-- (reservations are queued only in scopes that had a cap, so other scopes have none)
local swept = {}
local function sweep_once(scope)
  if not swept[scope] then
    swept[scope] = true
    if #limits_of(scope).caps > 0 then sweep(scope, now, retention) end
  end
end
for _, s in ipairs(rs) do sweep_once(s) end
for _, c in ipairs(cands) do
  sweep_once(c[1])
  sweep_once(c[2])
end

-- 2. request-scoped rate limits: a hard stop before any candidate is considered
local fewest = math.huge
for _, c in ipairs(cands) do fewest = math.min(fewest, c[5]) end
local request_rpm = {}  -- passed rpm cells: {key, new tat}
local treq, ttok, blocked = nil, nil, nil
for _, s in ipairs(rs) do
  local l = limits_of(s)
  for _, dim in ipairs((l.rpm or l.tpm) and { { 'rpm', l.rpm, 1 }, { 'tpm', l.tpm, fewest } } or {}) do
    local kind, limit, cost = dim[1], dim[2], dim[3]
    if limit then
      local r = gcra(cell_key(s, kind), now, cost, limit)
      if kind == 'rpm' then treq = offer(treq, limit, r) else ttok = offer(ttok, limit, r) end
      if r.ok then
        if kind == 'rpm' then table.insert(request_rpm, { cell_key(s, kind), r.tat, limit, r }) end
      elseif blocked == nil or r.retry > blocked.retry then
        blocked = { k = 'rate', retry = r.retry, scope = s, kind = kind, limit = limit }
      end
    end
  end
end
if blocked then
  return cjson.encode({ a = 0, d = blocked, rq = treq, tk = ttok })
end

-- 3. walk the candidates in plan order
local skipped = {}
local cap_block, share_block, rate_block = nil, nil, nil
local creq, ctok = treq, nil

local function check_caps(scopes, cost)
  local failed, counters = false, {}
  for _, s in ipairs(scopes) do
    for _, cap in ipairs(limits_of(s).caps) do
      local spec, limit = cap[1], cap[2]
      local bucket, reset = bucket_of(spec, now)
      local key = spend_key(s, spec, bucket)
      local spent, reserved = spend_used(key, spec, now)
      local remaining = limit - spent - reserved
      table.insert(counters, { key, spec, s, reset or 0 })
      if cost > remaining then
        failed = true
        if cap_block == nil or remaining < cap_block.remaining then
          cap_block = { k = 'cap', scope = s, spec = spec, limit = limit, remaining = remaining, cost = cost,
                        retry = math.max(0, (reset or spend_resets_at(key, spec, now)) - now) }
        end
      end
    end
  end
  return failed, counters
end

local function check_shares(tier)
  local failed = false
  for _, s in ipairs(rs) do
    for _, sh in ipairs(limits_of(s).shares) do
      if sh[1] == tier then
        local key = share_key(s, sh[2])
        roll(key, sh[2], now)
        local v = redis.call('HMGET', key, 'T:n', 'T:' .. tier)
        local total, count = tonumber(v[1]) or 0, tonumber(v[2]) or 0
        if count + 1 > sh[3] * (total + 1) + EPS then
          failed = true
          local retry = math.max(0, drop_time(key, sh[2], tier, now) - now)
          if share_block == nil or retry < share_block.retry then
            share_block = { k = 'share', scope = s, tier = tier, win = sh[2], max = sh[3], retry = retry }
          end
        end
      end
    end
  end
  return failed
end

local function check_rates(c)
  local failed, passed = false, {}
  for _, p in ipairs(request_rpm) do
    table.insert(passed, { p[1], p[2], 'rpm', nil })
  end
  local checks = {}
  for _, s in ipairs(rs) do
    local tpm = limits_of(s).tpm
    if tpm then table.insert(checks, { s, 'tpm', tpm, c[5] }) end
  end
  for _, s in ipairs({ c[1], c[2] }) do
    local l = limits_of(s)
    if l.rpm then table.insert(checks, { s, 'rpm', l.rpm, 1 }) end
    if l.tpm then table.insert(checks, { s, 'tpm', l.tpm, c[5] }) end
  end
  for _, ch in ipairs(checks) do
    local s, kind, limit, cost = ch[1], ch[2], ch[3], ch[4]
    local r = gcra(cell_key(s, kind), now, cost, limit)
    if kind == 'rpm' then creq = offer(creq, limit, r) else ctok = offer(ctok, limit, r) end
    if r.ok then
      table.insert(passed, { cell_key(s, kind), r.tat, kind, s })
    else
      failed = true
      if rate_block == nil or r.retry < rate_block.retry then
        rate_block = { k = 'rate', retry = r.retry, scope = s, kind = kind, limit = limit }
      end
    end
  end
  return failed, passed
end

local function commit(index, c, counters, passed)
  local id, cost, tier, tokens = req.id, c[4], c[3], c[5]
  local deadline = now + req.ttl
  local queued, zs = {}, {}
  for _, ctr in ipairs(counters) do
    redis.call('HINCRBY', ctr[1], 'reserved', I(cost))
    touch_spend(ctr[1], ctr[2], ctr[4] ~= 0 and ctr[4] or nil, now)
    if not queued[ctr[3]] then
      queued[ctr[3]] = true
      table.insert(zs, ctr[3])
      redis.call('ZADD', queue_key(ctr[3]), F(deadline), id)
    end
  end
  local token_scopes = {}
  for _, p in ipairs(passed) do
    gcra_store(p[1], p[2], now)
    if p[3] == 'tpm' then table.insert(token_scopes, p[4]) end
  end
  local shares = {}
  for _, s in ipairs(rs) do
    local windows = {}
    for _, sh in ipairs(limits_of(s).shares) do
      if not windows[sh[2]] then
        windows[sh[2]] = true
        local w = sh[2]
        local key = share_key(s, w)
        local slot = slot_index(now, w)
        roll(key, w, now)
        rolling_add(key, w, slot, 'n', 1)
        rolling_add(key, w, slot, tier, 1)
        redis.call('PEXPIRE', key, I((2 * w + slot_seconds(w)) * 1000))
        table.insert(shares, { s, w, slot, tier })
      end
    end
  end
  local rec = { c = counters, z = zs, t = token_scopes, s = shares }
  local key = res_key(id)
  local reply = cjson.encode({ a = 1, i = index, s = skipped, rq = creq, tk = ctok })
  redis.call('HSET', key, 'st', 'a', 'amt', I(cost), 'tok', I(tokens), 'dl', F(deadline), 'd', cjson.encode(rec),
    'req', req.req,  -- the request id, for whoever investigates a held reservation
    'reply', reply)
  redis.call('PEXPIRE', key, I((req.ttl + retention) * 1000))
  return reply
end

for i, c in ipairs(cands) do
  creq, ctok = nil, nil  -- headers describe the candidate under consideration
  for _, p in ipairs(request_rpm) do creq = offer(creq, p[3], p[4]) end
  local scopes = {}
  for _, s in ipairs(rs) do table.insert(scopes, s) end
  table.insert(scopes, c[1])
  table.insert(scopes, c[2])
  local failed, counters = check_caps(scopes, c[4])
  if failed then
    table.insert(skipped, { i - 1, 'credit_limit' })
  elseif check_shares(c[3]) then
    table.insert(skipped, { i - 1, 'route_quota' })
  else
    local rate_failed, passed = check_rates(c)
    if rate_failed then
      table.insert(skipped, { i - 1, 'rate_limit' })
    else
      return commit(i - 1, c, counters, passed)
    end
  end
end

-- 4. nothing fits
local only_rate = true
for _, sk in ipairs(skipped) do
  if sk[2] ~= 'rate_limit' then only_rate = false end
end
local denial = cap_block or share_block
if only_rate and rate_block then denial = rate_block end
return cjson.encode({ a = 0, s = skipped, d = denial, rq = creq, tk = ctok })
