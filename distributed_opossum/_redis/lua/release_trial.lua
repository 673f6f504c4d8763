-- release_trial: give a trial permit back without an outcome.
--
-- KEYS[1]  state hash (<prefix>:{<name>}:state)
-- ARGV[1]  holder id the permit was granted to
-- returns  the shared state, `changed` 0.
--
-- For a trial whose caller was cancelled: neither a success nor a failure,
-- but its permit should not stay taken until the lease expires. Releasing a
-- permit that is gone already (expired, or cleared by a transition) is a no-op.

local key = KEYS[1]
local holder = ARGV[1]

local now = now_ms()
local s = load_state(key)
if s ~= nil and s.leases[holder] ~= nil then
  redis.call('HDEL', key, LEASE_PREFIX .. holder)
  s.leases[holder] = nil
end
return state_reply(s, now, false)
