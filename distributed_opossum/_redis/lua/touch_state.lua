-- touch_state: the shared state and Redis' clock, and the keys kept alive.
--
-- KEYS[1]  state hash (<prefix>:{<name>}:state)
-- KEYS[2]  stats list (<prefix>:{<name>}:distributedStats)
-- KEYS[3]  aggregates hash (<prefix>:{<name>}:pods)
-- ARGV[1]  key_ttl_ms
-- returns  the shared state, `changed` 0 (as read_state).
--
-- The safety sweep of an idle breaker: a pod with nothing to report sends no
-- report, so this renews the TTLs an idle report used to renew (the state
-- hash as save_state would, the list and its sums by key_ttl_ms) and tells
-- the pod what it may have missed. It creates nothing: a missing hash stays
-- missing (the pod's next report creates it, with a fresh gen).

local now = now_ms()
local key_ttl_ms = arg_number(1, 'key_ttl_ms')
local s = load_state(KEYS[1])
if s ~= nil then
  expire_state(KEYS[1], s, now, key_ttl_ms)
end
redis.call('PEXPIRE', KEYS[2], key_ttl_ms)
redis.call('PEXPIRE', KEYS[3], key_ttl_ms)
return state_reply(s, now, false)
