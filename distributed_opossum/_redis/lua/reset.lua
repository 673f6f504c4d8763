-- reset: close the breaker cluster-wide and forget its failed attempts.
--
-- KEYS[1]  state hash (<prefix>:{<name>}:state)
-- KEYS[2]  stats list, KEYS[3] its sums: deleted, the window starts over
-- ARGV[1]  candidate gen, used only if the state hash has to be created
-- ARGV[2]  key_ttl_ms
-- ARGV[3]  events channel     ARGV[4] breaker name
-- ARGV[5]  instance id (origin of the broadcast)
-- returns  the shared state, `changed` always 1.
--
-- Always a new epoch and closed_at = now, even when already closed: the
-- stats window starts over, as after any close. The list and its sums go
-- here, in one step, so the next report finds nothing to trim.

local key = KEYS[1]
local candidate_gen = ARGV[1]
local key_ttl_ms = arg_number(2, 'key_ttl_ms')
local channel, name, instance = ARGV[3], ARGV[4], ARGV[5]

local now = now_ms()
local s = load_or_create(key, candidate_gen)
close_state(key, s, now, 'reset')
redis.call('DEL', KEYS[2], KEYS[3])
save_state(key, s, now, key_ttl_ms)
publish(channel, name, instance, s, now)
return state_reply(s, now, true)
