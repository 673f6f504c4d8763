-- finish_trial: report the outcome of a trial call.
--
-- KEYS[1]  state hash (<prefix>:{<name>}:state)
-- KEYS[2]  stats list, KEYS[3] its sums (deleted when the trial closes the
--          breaker: the window starts over, and no report has to trim it)
-- ARGV[1]  holder id the permit was granted to
-- ARGV[2]  epoch the trial ran under
-- ARGV[3]  outcome: success | failure
-- ARGV[4]  half_open_max_calls: successes needed to close
-- ARGV[5]  reset_timeout_ms   ARGV[6] reset_timeout_multiplier
-- ARGV[7]  max_reset_timeout_ms (-1 = no cap)
-- ARGV[8]  jitter factor for the next open period, drawn by the client
-- ARGV[9]  key_ttl_ms
-- ARGV[10] events channel     ARGV[11] breaker name
-- ARGV[12] instance id (origin of the broadcast)
-- returns  the shared state; `changed` is 1 when this outcome closed or
--          re-opened the breaker, which it also PUBLISHes.
--
-- success/failure count only from the holder of a live lease, in half_open,
-- under the current epoch: a late result from an expired permit or an older
-- period never flips the state. A cancelled trial gives its permit back with
-- release_trial.lua instead.

local key = KEYS[1]
local holder, outcome = ARGV[1], ARGV[3]
local epoch = arg_number(2, 'epoch')
local max_calls = arg_number(4, 'half_open_max_calls')
local reset_ms = arg_number(5, 'reset_timeout_ms')
local multiplier = arg_number(6, 'reset_timeout_multiplier')
local max_reset_ms = arg_number(7, 'max_reset_timeout_ms')
local jitter = arg_number(8, 'jitter')
local key_ttl_ms = arg_number(9, 'key_ttl_ms')
local channel, name, instance = ARGV[10], ARGV[11], ARGV[12]
if outcome ~= 'success' and outcome ~= 'failure' then
  error('ARGV[3] (outcome) must be success or failure: ' .. tostring(outcome))
end

local now = now_ms()
local s = load_state(key)
if s == nil then
  return state_reply(nil, now, false)
end

local lease = s.leases[holder]
if s.state ~= 'half_open' or s.epoch ~= epoch or lease == nil or lease <= now then
  return state_reply(s, now, false)
end

redis.call('HDEL', key, LEASE_PREFIX .. holder)
s.leases[holder] = nil
local changed = false
if outcome == 'failure' then
  open_state(key, s, now, 'trial_failure', reset_ms, multiplier, max_reset_ms, jitter)
  changed = true
else
  s.trial_successes = s.trial_successes + 1
  if s.trial_successes >= max_calls then
    close_state(key, s, now, 'trial_success')
    redis.call('DEL', KEYS[2], KEYS[3])
    changed = true
  end
end
save_state(key, s, now, key_ttl_ms)
if changed then
  publish(channel, name, instance, s, now)
end
return state_reply(s, now, changed)
