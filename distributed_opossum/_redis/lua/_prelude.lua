-- Shared helpers of every script in this directory.
--
-- Redis scripts cannot load other files, so distributed_opossum/_scripts.py
-- prepends this file to each script before registering it; a script is never
-- sent to Redis on its own. Only `local` definitions: Redis refuses scripts
-- that create globals.
--
-- The shared state of one breaker is the hash KEYS[...] `state`:
--   gen              random id, new whenever the hash is (re)created
--   epoch            +1 on every open and every close
--   state            closed | open | half_open | forced_open
--   open_until       ms (Redis TIME) when an open period ends, 0 otherwise
--   attempts         consecutive opens without a close
--   closed_at        ms of the last close, 0 if never closed
--   reason           why the state last changed (short string)
--   trial_successes  successful trials in the current half-open period
--   lease:<holder>   ms at which that holder's trial permit expires
--   refreshed        ms of the last TTL renewal by a tally (report_window)
--
-- Next to it, the tally lease KEYS[...] `tally` (report_window) holds a
-- snapshot of the state for the plain reports to read; every change of the
-- state deletes it (save_state), so the next report tallies and writes it anew.

local STATES = { closed = true, open = true, half_open = true, forced_open = true }
local LEASE_PREFIX = 'lease:'
local CORE_FIELDS = { 'epoch', 'open_until', 'attempts', 'closed_at', 'trial_successes' }

-- Open periods stop growing at ten years, so every time stays an exact
-- integer in a Lua double and in Redis' 64-bit integer replies, whatever
-- multiplier ^ attempts comes to.
local MAX_PERIOD_MS = 315360000000
local MAX_EXACT = 9007199254740992 -- 2^53

-- Redis TIME in ms: the only clock all pods share.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A non-negative integer, or nil for anything else (text, NaN, fractions, huge).
local function to_count(v)
  local n = tonumber(v)
  if n == nil or n ~= n or n < 0 or n >= MAX_EXACT or n ~= math.floor(n) then
    return nil
  end
  return n
end

-- A number from ARGV that the client has already validated; a bad one is a
-- bug on the client side, reported loudly rather than guessed around.
local function arg_number(i, what)
  local n = tonumber(ARGV[i])
  if n == nil or n ~= n then
    error('ARGV[' .. i .. '] (' .. what .. ') is not a number: ' .. tostring(ARGV[i]))
  end
  return n
end

local function key_type(key)
  local t = redis.call('TYPE', key)
  if type(t) == 'table' then
    return t.ok
  end
  return t
end

-- The state hash as a table, or nil when it is missing or unusable (wrong
-- type, no gen, unknown state, a core number that does not parse). Garbage
-- lease values count as expired leases.
local function load_state(key)
  -- pcall rather than a TYPE round first: a key of another type is an error
  -- reply here, and one command less on every call.
  local raw = redis.pcall('HGETALL', key)
  if raw.err ~= nil or #raw == 0 then
    return nil
  end
  local s = { leases = {} }
  for i = 1, #raw, 2 do
    local field, value = raw[i], raw[i + 1]
    -- (The first byte first: a cheap test, and most fields are no lease.)
    if string.byte(field, 1) == 108 and string.sub(field, 1, #LEASE_PREFIX) == LEASE_PREFIX then
      s.leases[string.sub(field, #LEASE_PREFIX + 1)] = to_count(value) or 0
    else
      s[field] = value
    end
  end
  if type(s.gen) ~= 'string' or s.gen == '' or not STATES[s.state] then
    return nil
  end
  for _, field in ipairs(CORE_FIELDS) do
    s[field] = to_count(s[field])
    if s[field] == nil then
      return nil
    end
  end
  if type(s.reason) ~= 'string' then
    s.reason = ''
  end
  return s
end

local function fresh_state(gen)
  return {
    gen = gen, epoch = 0, state = 'closed', open_until = 0, attempts = 0,
    closed_at = 0, reason = 'created', trial_successes = 0, leases = {},
  }
end

-- Loads the state hash, replacing it by a fresh one (new gen, closed) when it
-- is missing or unusable. Pods see the new gen and take the hash as it is.
local function load_or_create(key, candidate_gen)
  local s = load_state(key)
  if s ~= nil then
    return s, false
  end
  redis.call('DEL', key)
  return fresh_state(candidate_gen), true
end

-- Latest expiry among the leases still live at `now`, or 0.
local function latest_lease(s, now)
  local latest = 0
  for _, expires in pairs(s.leases) do
    if expires > now and expires > latest then
      latest = expires
    end
  end
  return latest
end

local function drop_expired_leases(key, s, now)
  for holder, expires in pairs(s.leases) do
    if expires <= now then
      redis.call('HDEL', key, LEASE_PREFIX .. holder)
      s.leases[holder] = nil
    end
  end
end

local function clear_leases(key, s)
  for holder in pairs(s.leases) do
    redis.call('HDEL', key, LEASE_PREFIX .. holder)
  end
  s.leases = {}
end

-- Sets the state hash's TTL: key_ttl_ms past the end of the open period or of
-- the latest lease, so attempts survive an idle open period. A forced-open
-- breaker never expires: only reset() may end it.
local function expire_state(key, s, now, key_ttl_ms)
  if s.state == 'forced_open' then
    redis.call('PERSIST', key)
    return
  end
  local hold = math.max(0, s.open_until - now, latest_lease(s, now) - now)
  redis.call('PEXPIRE', key, key_ttl_ms + hold)
end

-- The tally lease of the breaker whose state hash is `key`: the same name
-- with `tally` for `state` (keys.py builds both; a test keeps them so).
local function tally_key_of(key)
  return string.sub(key, 1, -6) .. 'tally'
end

-- Writes the core fields and sets the key's TTL (see expire_state). The
-- tally lease goes with its snapshot of the old state: the next report
-- tallies and snapshots the new one. `refreshed` (optional) is written in
-- the same command: one call less on the path of a trip.
local function save_state(key, s, now, key_ttl_ms, refreshed)
  redis.call('DEL', tally_key_of(key))
  local fields = {
    'gen', s.gen, 'epoch', s.epoch, 'state', s.state, 'open_until', s.open_until,
    'attempts', s.attempts, 'closed_at', s.closed_at, 'reason', s.reason,
    'trial_successes', s.trial_successes,
  }
  if refreshed ~= nil then
    fields[#fields + 1] = 'refreshed'
    fields[#fields + 1] = refreshed
  end
  redis.call('HSET', key, unpack(fields))
  expire_state(key, s, now, key_ttl_ms)
end

-- The reply shape every state-returning script ends with; _scripts.py reads
-- it into SharedState. A missing hash reads as closed with an empty gen.
local function state_reply(s, now, changed)
  if s == nil then
    return { '', 0, 'closed', 0, 0, 0, '', now, 0, 0, 0 }
  end
  return {
    s.gen, s.epoch, s.state, s.open_until, s.attempts, s.closed_at, s.reason,
    now, changed and 1 or 0, latest_lease(s, now), s.trial_successes,
  }
end

-- PUBLISH on a single Redis. For a Redis Cluster client scripts.py loads this
-- line with SPUBLISH instead: a shard channel, so that a broadcast stays on the
-- shard that holds the breaker's keys rather than crossing the whole bus.
local function publish(channel, name, origin, s, now)
  redis.call('PUBLISH', channel, cjson.encode({
    v = 1, name = name, gen = s.gen, epoch = s.epoch, state = s.state,
    open_until = s.open_until, now = now, attempts = s.attempts,
    origin = origin, reason = s.reason,
  }))
end

-- Open period for the given attempt: reset x multiplier^(attempts-1), capped,
-- times the client's jitter factor, capped again; max_ms < 0 means no cap.
local function backoff_ms(attempts, reset_ms, multiplier, max_ms, jitter)
  local period = reset_ms * multiplier ^ math.max(attempts - 1, 0)
  if period ~= period or period > MAX_PERIOD_MS then
    period = MAX_PERIOD_MS
  end
  if max_ms >= 0 and period > max_ms then
    period = max_ms
  end
  period = period * jitter
  if max_ms >= 0 and period > max_ms then
    period = max_ms
  end
  return math.floor(math.min(math.max(period, 0), MAX_PERIOD_MS))
end

local function open_state(key, s, now, reason, reset_ms, multiplier, max_ms, jitter)
  s.state = 'open'
  s.epoch = s.epoch + 1
  s.attempts = s.attempts + 1
  s.open_until = now + backoff_ms(s.attempts, reset_ms, multiplier, max_ms, jitter)
  s.reason = reason
  s.trial_successes = 0
  clear_leases(key, s)
end

local function close_state(key, s, now, reason)
  -- The list and the windows go with a close: the next tally sets their TTLs.
  redis.call('HDEL', key, 'refreshed')
  s.state = 'closed'
  s.epoch = s.epoch + 1
  s.attempts = 0
  s.open_until = 0
  s.closed_at = now
  s.reason = reason
  s.trial_successes = 0
  clear_leases(key, s)
end

