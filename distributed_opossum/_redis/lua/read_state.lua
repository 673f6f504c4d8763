-- read_state: the shared state and Redis' clock, read-only.
--
-- KEYS[1]  state hash (<prefix>:{<name>}:state)
-- returns  the shared state, `changed` 0. A missing or unusable hash reads as
--          closed with an empty gen and creates nothing: reading must not
--          write (replicas, read-only ACL users), and the next write creates
--          the hash with a fresh gen anyway.

local now = now_ms()
return state_reply(load_state(KEYS[1]), now, false)
