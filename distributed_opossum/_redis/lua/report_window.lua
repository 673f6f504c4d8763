-- report_window: one pod's report by script, the tally of every pod's window, the decision.
--
-- KEYS[1]  stats list (<prefix>:{<name>}:distributedStats)
-- KEYS[2]  state hash (<prefix>:{<name>}:state)
-- KEYS[3]  pod windows hash (<prefix>:{<name>}:windows), see "Windows" below
-- KEYS[4]  tally lease (<prefix>:{<name>}:tally), see "The tally" below
-- ARGV[1]  instance id of the reporting pod
-- ARGV[2]  fires        ARGV[3] successes   ARGV[4] failures
-- ARGV[5]  timeouts     ARGV[6] rejects     (counts of the bucket)
-- ARGV[7]  local_open: 1 if the pod tripped locally in this bucket, else 0
-- ARGV[8]  epoch the pod currently knows
-- ARGV[9]  jitter factor for the open period (e.g. 0.93), drawn by the client
-- ARGV[10] candidate gen, used only if the state hash has to be created
-- ARGV[11] events channel      ARGV[12] breaker name (for the broadcast)
-- ARGV[13..26] decision parameters, in DecisionParams.to_argv() order (see
--          PARAM_NAMES below); quorum_count and quorum_fraction are 0 when
--          unused, max_reset_timeout_ms is -1 for no cap
-- ARGV[27] gen the pod currently knows ('' before its first sync). A pod
--          that knew another history (Redis lost the state since, or the pod
--          never synced) reports for the current one: its epoch means
--          nothing here.
-- ARGV[28] the pod's window: "<volume> <failures> <trips>", its own entries
--          of the current epoch within window_ms, this bucket included
-- ARGV[29] 1 when the pod holds the tally lease (it won it with SET NX in
--          its plain report), else 0
-- ARGV[30] tally lease ms (the pod's report interval)
-- returns  the shared state (see state_reply in _prelude.lua); `changed` is 1
--          when this report opened the breaker, which it also PUBLISHes;
--          then the pooled window (volume, failures, reporting pods, votes),
--          or four -1 when this call did not tally.
--
-- The list. Every non-empty bucket is one JSON entry (see ARCHITECTURE), in
-- the order the reports came: the record of every pod's reports. A busy pod
-- appends its entry with a plain RPUSH (the timestamp is its estimate of
-- Redis' clock), a script report here (with Redis TIME). The decision does
-- not read the list: it reads the windows below, which are the same entries
-- summed by the pod that wrote them. The tally caps the list, oldest first,
-- at max(max_entries, (pods + 1) * pod_entries), pod_entries being what one
-- pod writes in a window with room to spare: it always covers the window.
-- A close deletes the list and the windows (finish_trial, reset).
--
-- Windows. KEYS[3] holds one field per pod with calls or a trip in its
-- window: pod:<instance> = "<gen>:<epoch> <ts> <volume> <failures> <trips>",
-- written by the pod at every report (HSET, plain or here) and removed by it
-- (HDEL) when its window empties. ts is Redis ms (estimated by a plain
-- report); gen and epoch are what the pod knew, and its counts cover only
-- its entries of that epoch: every close is a new epoch, so the window
-- starts over at each close as the list does. A field counts when it is
-- younger than window_ms and of the current gen and epoch; a field older
-- than window_ms (a pod gone, or idle since) is removed by the tally.
-- Fields that do not parse count nowhere and go.
--
-- The tally. Reading every pod's field is O(pods), so one pod per breaker
-- and per lease period does it: the one whose SET NX PX of KEYS[4] succeeds,
-- in its plain report or here. Every other report costs O(1). So the pooled
-- rate and the quorum are judged at most one report interval after the
-- entries that cross them. A trip is judged at once: without quorum it opens
-- without reading anyone (a trip anywhere opens), with quorum it tallies.
-- The tally also renews the TTLs (every quarter of key_ttl_ms) and leaves
-- a snapshot of the state and of the pooled figures in the lease (KEYS[4]):
-- a plain report's SET NX PX GET reads it, or wins the lease when it is
-- gone (and leaves there the last snapshot it read until its tally writes
-- the new one). Every change of the state deletes the lease (save_state),
-- so a snapshot older than the state lasts at most until the next tally;
-- pods take a snapshot for news only when it is newer than what they know.
-- This script writes its snapshot after the state.

local stats_key, state_key, windows_key, tally_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local instance = ARGV[1]
local local_open = ARGV[7] == '1'
local known_epoch = arg_number(8, 'epoch')
local candidate_gen, channel, name = ARGV[10], ARGV[11], ARGV[12]
local known_gen = ARGV[27]
local holds_lease = ARGV[29] == '1'
local function lease_ms()
  return math.max(1, arg_number(30, 'tally lease ms'))
end
-- Same names and order as DecisionParams.ARGV_FIELDS (a test keeps them equal).
local PARAM_NAMES = {
  'window_ms', 'volume_threshold', 'error_threshold_percentage', 'quorum_count',
  'quorum_fraction', 'min_pod_volume', 'reset_timeout_ms', 'reset_timeout_multiplier',
  'max_reset_timeout_ms', 'half_open_max_calls', 'lease_ttl_ms', 'max_entries', 'key_ttl_ms',
  'pod_entries',
}
-- Parameters are read when first used: a number from text costs Redis more
-- than most of a busy tally, and most reports need only a few of them.
local PARAM_AT = {}
for i = 1, #PARAM_NAMES do
  PARAM_AT[PARAM_NAMES[i]] = 12 + i
end
local p = setmetatable({}, {
  __index = function(params, field)
    local value = arg_number(PARAM_AT[field], field)
    rawset(params, field, value)
    return value
  end,
})
local quorum = ARGV[16] ~= '0' or ARGV[17] ~= '0' -- quorum_count, quorum_fraction

-- No pod reports more than this many calls of one kind at once (10^8 in one
-- window); a window claiming more is forged or corrupt and counts nowhere.
local MAX_COUNT = 100000000

local function fmt(n)
  return string.format('%.0f', n) -- every digit, never 1e+15
end

local function is_failing(f, volume, threshold)
  return volume > 0 and f * 100 > threshold * volume
end

-- "<volume> <failures> <trips>" as numbers, or nil for anything else.
local function parse_counts(text)
  if type(text) ~= 'string' then
    return nil
  end
  local v, f, t = string.match(text, '^(%d+) (%d+) (%d+)$')
  v, f, t = to_count(v), to_count(f), to_count(t)
  if v == nil or f == nil or t == nil or f > v or v > MAX_COUNT or t > MAX_COUNT then
    return nil
  end
  return v, f, t
end

-- The bucket's counts, read only when there is an entry to write.
local has_entry = local_open or ARGV[2] ~= '0' or ARGV[3] ~= '0' or ARGV[4] ~= '0'
  or ARGV[5] ~= '0' or ARGV[6] ~= '0'
local fires, successes, failures, timeouts, rejects
if has_entry then
  fires = arg_number(2, 'fires')
  successes = arg_number(3, 'successes')
  failures = arg_number(4, 'failures')
  timeouts = arg_number(5, 'timeouts')
  rejects = arg_number(6, 'rejects')
end

-- '' when a plain report has just written this pod's window (its tally).
local writes_window = ARGV[28] ~= ''
local own_volume, own_failures, own_trips = 0, 0, 0
if writes_window then
  own_volume, own_failures, own_trips = parse_counts(ARGV[28])
  if own_volume == nil then
    error('ARGV[28] (window) is not "<volume> <failures> <trips>": ' .. tostring(ARGV[28]))
  end
end

local now = now_ms()
local s, created = load_or_create(state_key, candidate_gen)
local entry_epoch = known_epoch
if known_gen ~= s.gen then
  entry_epoch = s.epoch
end

-- The entry, as a plain report would have written it (with Redis' clock).
if has_entry then
  local quoted = '"' .. instance .. '"'
  if string.find(instance, '[^%w%-%._:#@/+=]') then
    quoted = cjson.encode(instance)
  end
  local entry = '{"v":1,"timestamp":' .. fmt(now) .. ',"instance":' .. quoted
    .. ',"fires":' .. fmt(fires) .. ',"successes":' .. fmt(successes)
    .. ',"failures":' .. fmt(failures) .. ',"timeouts":' .. fmt(timeouts)
    .. ',"rejects":' .. fmt(rejects) .. ',"local_open":' .. tostring(local_open)
    .. ',"epoch":' .. fmt(entry_epoch) .. '}'
  if type(redis.pcall('RPUSH', stats_key, entry)) == 'table' then
    redis.call('DEL', stats_key) -- something that is not ours
    redis.call('RPUSH', stats_key, entry)
  end
end

-- The pod's own window. A trip counts in it whatever the pod summed: the
-- pod may have tripped on evidence of an epoch it did not know was over.
if local_open and own_trips == 0 then
  own_trips = 1
end
local own_field = 'pod:' .. instance
local function write_own()
  if own_volume == 0 and own_trips == 0 then
    return redis.pcall('HDEL', windows_key, own_field)
  end
  return redis.pcall('HSET', windows_key, own_field, s.gen .. ':' .. fmt(entry_epoch) .. ' '
    .. fmt(now) .. ' ' .. fmt(own_volume) .. ' ' .. fmt(own_failures) .. ' ' .. fmt(own_trips))
end
if (writes_window or local_open) and type(write_own()) == 'table' then
  redis.call('DEL', windows_key) -- something that is not ours
  write_own()
end

-- Every pod's window that counts now, summed. Fields too old, or that do
-- not parse, are removed. Written "<gen>:<epoch> <ts> <volume> <failures>
-- <trips>", so that one comparison tells a field of the current gen and
-- epoch, and only its numbers are read (tonumber is what a field costs).
local function tally()
  local raw = redis.pcall('HGETALL', windows_key)
  local a = {
    volume = 0, failures = 0, trips = 0, trip_pods = 0, reporting = 0, votes = 0, pods = 0,
  }
  if raw.err ~= nil then
    return a
  end
  -- A pod's clock estimate is off by a round trip, not by a window: a field
  -- from further in the future is forged or corrupt.
  local young_after, too_young = now - p.window_ms, now + p.window_ms
  local mpv, threshold = p.min_pod_volume, p.error_threshold_percentage
  local head = s.gen .. ':' .. fmt(s.epoch) .. ' '
  local after_head = #head + 1
  -- Times of this era have 13 digits: those compare as text, which costs
  -- less than reading them as numbers (tonumber is strtod).
  local oldest, newest = fmt(young_after), fmt(too_young)
  local digits = #oldest
  local text_times = #newest == digits
  local find, match = string.find, string.match
  -- Locals in the loop: it runs once per pod.
  local pods, volume, failures, trips, trip_pods, reporting, votes = 0, 0, 0, 0, 0, 0, 0
  local gone = {}
  for i = 2, #raw, 2 do
    local value = raw[i]
    if find(value, head, 1, true) == 1 then
      local ts, v, f, t = match(value, '^(%d+) (%d+) (%d+) (%d+)$', after_head)
      local young
      if ts ~= nil and text_times and #ts == digits then
        young = ts > oldest and ts <= newest
      else
        young = ts ~= nil and tonumber(ts) > young_after and tonumber(ts) <= too_young
      end
      if young then
        v, f = tonumber(v), tonumber(f)
        t = t == '0' and 0 or tonumber(t)
        if f > v or v > MAX_COUNT or t > MAX_COUNT then
          young = false
        else
          pods = pods + 1
          if v > 0 or t > 0 then
            volume, failures, trips = volume + v, failures + f, trips + t
            reporting = reporting + 1
            if t > 0 then
              trip_pods, votes = trip_pods + 1, votes + 1
            elseif v >= mpv and f * 100 > threshold * v then
              votes = votes + 1
            end
          end
        end
      end
      if not young then
        gone[#gone + 1] = raw[i - 1]
      end
    else
      -- Another gen or epoch: counts nowhere, listed until it is old.
      local ts = tonumber(match(value, '^%S+:%d+ (%d+) %d+ %d+ %d+$'))
      if ts == nil or ts <= young_after or ts > too_young then
        gone[#gone + 1] = raw[i - 1]
      else
        pods = pods + 1
      end
    end
  end
  for i = 1, #gone, 1000 do
    redis.call('HDEL', windows_key, unpack(gone, i, math.min(i + 999, #gone)))
  end
  a.pods, a.volume, a.failures, a.trips = pods, volume, failures, trips
  a.trip_pods, a.reporting, a.votes = trip_pods, reporting, votes
  return a
end

-- Votes the quorum needs among `pods` pods with a say.
local function votes_needed(pods)
  if p.quorum_count > 0 then
    return p.quorum_count
  end
  -- The epsilon keeps 0.28 * 25 (7.000000000000001 in doubles) at 7 votes.
  return math.max(1, math.ceil(p.quorum_fraction * pods - 1e-9))
end

-- Why the tallied windows say the shared breaker should open, or nil.
local function decide(a)
  if not quorum then
    -- A trip of an older epoch comes from a pod that has not heard of the
    -- latest close yet: it does not count (tally() counts this epoch only).
    if a.trips > 0 then
      return 'local_trip'
    end
    if a.volume >= p.volume_threshold
        and is_failing(a.failures, a.volume, p.error_threshold_percentage) then
      return 'pooled_rate'
    end
    return nil
  end
  -- Quorum: each pod votes on its own window; the pooled rate has no say.
  if a.votes >= votes_needed(a.reporting) then
    return 'quorum'
  end
  return nil
end

-- An open period over, or a half-open one with no trial under way: the
-- shared state still reads open after a freeze kept every pod from asking
-- for a trial, and a new trip must open it again at once. The failures that
-- opened it are history and re-open nothing on their own: only trips do.
local function unused_opening()
  if s.state == 'open' then
    return s.open_until <= now
  end
  return s.state == 'half_open' and latest_lease(s, now) == 0
end

local function reopen_reason(a)
  if a.trip_pods == 0 then
    return nil
  end
  if not quorum then
    return 'local_trip'
  end
  if a.trip_pods >= votes_needed(math.max(a.reporting, a.trip_pods)) then
    return 'quorum'
  end
  return nil
end

-- The lease, if free. A lease without a TTL is not one of ours (a stray SET):
-- it would stop every tally until the next change of state, so it goes.
local function take_lease()
  local ms = lease_ms()
  if redis.call('SET', tally_key, instance, 'NX', 'PX', ms) then
    return true
  end
  if redis.call('PTTL', tally_key) == -1 then
    redis.call('SET', tally_key, instance, 'PX', ms)
    return true
  end
  return false
end

-- The tally runs when this pod holds the lease, takes it now, or must judge
-- its own trip; a trip without quorum on a closed breaker needs nobody else.
local reason, a
local fast_trip = local_open and not quorum and s.state == 'closed' and entry_epoch == s.epoch
if fast_trip then
  reason = 'local_trip'
elseif holds_lease or local_open or take_lease() then
  a = tally()
  if s.state == 'closed' then
    reason = decide(a)
  elseif local_open and unused_opening() then
    reason = reopen_reason(a)
  end
end

local changed = false
if reason ~= nil and (s.state == 'closed' or unused_opening()) then
  open_state(state_key, s, now, reason, p.reset_timeout_ms, p.reset_timeout_multiplier,
    p.max_reset_timeout_ms, arg_number(9, 'jitter'))
  changed = true
end

-- TTLs: renewed every quarter of key_ttl_ms by a tally or a change (the
-- state hash's `refreshed`), so the keys outlive any idle period shorter
-- than three quarters of key_ttl_ms; a sweep (touch_state) renews them too.
local refreshed = to_count(s.refreshed) or 0
local refresh = created or changed or s.state ~= 'closed'
  or (a ~= nil and (now - refreshed >= p.key_ttl_ms / 4 or refreshed > now))
if created or changed then
  save_state(state_key, s, now, p.key_ttl_ms, fmt(now))
elseif refresh then
  expire_state(state_key, s, now, p.key_ttl_ms)
  redis.call('HSET', state_key, 'refreshed', fmt(now))
end
if refresh then
  redis.call('PEXPIRE', stats_key, p.key_ttl_ms)
  redis.call('PEXPIRE', windows_key, p.key_ttl_ms)
end
if a ~= nil and not changed then
  -- The list's cap; then the lease, holding the snapshot plain reports read
  -- (after save_state, which deletes it: a state made anew shows in it):
  -- "<holder> <gen> <epoch> <state> <ms> <volume> <failures> <reporting> <votes>".
  local cap = math.max(p.max_entries, (a.pods + 1) * p.pod_entries)
  if redis.pcall('LTRIM', stats_key, -cap, -1).err ~= nil then
    redis.call('DEL', stats_key) -- something that is not ours
  end
  redis.call('SET', tally_key, instance .. ' ' .. s.gen .. ' ' .. fmt(s.epoch) .. ' '
    .. s.state .. ' ' .. fmt(now) .. ' ' .. fmt(a.volume) .. ' ' .. fmt(a.failures) .. ' '
    .. fmt(a.reporting) .. ' ' .. fmt(a.votes), 'PX', lease_ms())
end

if changed then
  publish(channel, name, instance, s, now)
end
local reply = state_reply(s, now, changed)
if a == nil then
  reply[12], reply[13], reply[14], reply[15] = -1, -1, -1, -1
else
  reply[12], reply[13], reply[14], reply[15] = a.volume, a.failures, a.reporting, a.votes
end
return reply
