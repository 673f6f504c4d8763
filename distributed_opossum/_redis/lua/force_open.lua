-- force_open: hold the breaker open cluster-wide, with no trials, until reset.
--
-- KEYS[1]  state hash (<prefix>:{<name>}:state)
-- ARGV[1]  candidate gen, used only if the state hash has to be created
-- ARGV[2]  events channel     ARGV[3] breaker name
-- ARGV[4]  instance id (origin of the broadcast)
-- returns  the shared state; `changed` is 0 if it was already forced open.
--
-- The hash loses its TTL while forced open (only reset() may end the state)
-- and gets it back from the next write after reset.

local key = KEYS[1]
local candidate_gen, channel, name, instance = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local now = now_ms()
local s = load_or_create(key, candidate_gen)
if s.state == 'forced_open' then
  return state_reply(s, now, false)
end
s.state = 'forced_open'
s.epoch = s.epoch + 1
s.open_until = 0
s.reason = 'forced_open'
s.trial_successes = 0
clear_leases(key, s)
save_state(key, s, now, 0)
publish(channel, name, instance, s, now)
return state_reply(s, now, true)
