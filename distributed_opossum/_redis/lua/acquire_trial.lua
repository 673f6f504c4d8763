-- acquire_trial: ask for one of the cluster's half-open trial permits.
--
-- KEYS[1]  state hash (<prefix>:{<name>}:state)
-- ARGV[1]  holder id (one per trial call)
-- ARGV[2]  half_open_max_calls: permits across the cluster
-- ARGV[3]  lease_ttl_ms: a permit not finished by then expires
-- ARGV[4]  key_ttl_ms
-- returns  { granted (0|1), retry_after_ms, <shared state> }
--          retry_after_ms, when not granted: until the earliest lease
--          expires (half_open), until open_until (open), -1 (forced_open),
--          0 (closed or no shared state: the caller proceeds as closed).
--
-- An open breaker whose open period is over becomes half_open here (same
-- epoch, no broadcast: every pod reaches open_until on its own). Asking again
-- with a holder that already has a live lease renews it rather than taking a
-- second permit, so a retried request cannot leak permits.

local key = KEYS[1]
local holder = ARGV[1]
local max_calls = arg_number(2, 'half_open_max_calls')
local lease_ttl_ms = arg_number(3, 'lease_ttl_ms')
local key_ttl_ms = arg_number(4, 'key_ttl_ms')

local function trial_reply(granted, retry_after, s, now, changed)
  return { granted, retry_after, unpack(state_reply(s, now, changed)) }
end

local now = now_ms()
local s = load_state(key)
if s == nil or s.state == 'closed' then
  return trial_reply(0, 0, s, now, false)
end
if s.state == 'forced_open' then
  return trial_reply(0, -1, s, now, false)
end

local changed = false
if s.state == 'open' then
  if now < s.open_until then
    return trial_reply(0, s.open_until - now, s, now, false)
  end
  s.state = 'half_open'
  s.reason = 'open_period_over'
  s.trial_successes = 0
  changed = true
end

drop_expired_leases(key, s, now)
local live, earliest = 0, nil
for other, expires in pairs(s.leases) do
  if other ~= holder then
    live = live + 1
    if earliest == nil or expires < earliest then
      earliest = expires
    end
  end
end

-- A trial that succeeded used its permit for the period: never more than
-- max_calls trials between two transitions.
local granted = 0
local retry_after = 0
if live + s.trial_successes < max_calls then
  s.leases[holder] = now + lease_ttl_ms
  redis.call('HSET', key, LEASE_PREFIX .. holder, s.leases[holder])
  granted = 1
else
  retry_after = earliest - now
end
save_state(key, s, now, key_ttl_ms)
return trial_reply(granted, retry_after, s, now, changed)
