-- report_window: append one pod's finished bucket, trim the window, decide.
--
-- KEYS[1]  stats list (<prefix>:{<name>}:distributedStats)
-- KEYS[2]  state hash (<prefix>:{<name>}:state)
-- KEYS[3]  aggregates hash (<prefix>:{<name>}:pods), see "Aggregates" below
-- ARGV[1]  instance id of the reporting pod
-- ARGV[2]  fires        ARGV[3] successes   ARGV[4] failures
-- ARGV[5]  timeouts     ARGV[6] rejects     (counts of the bucket)
-- ARGV[7]  local_open: 1 if the pod tripped locally in this bucket, else 0
-- ARGV[8]  epoch the pod currently knows
-- ARGV[9]  jitter factor for the open period (e.g. 0.93), drawn by the client
-- ARGV[10] candidate gen, used only if the state hash has to be created
-- ARGV[11] events channel      ARGV[12] breaker name (for the broadcast)
-- ARGV[13..25] decision parameters, in DecisionParams.to_argv() order (see
--          PARAM_NAMES below); quorum_count and quorum_fraction are 0 when
--          unused, max_reset_timeout_ms is -1 for no cap
-- ARGV[26] gen the pod currently knows ('' before its first sync). A trip
--          vote from a pod that knew another history (Redis lost the state
--          since, or the pod never synced) counts in the current one: its
--          epoch means nothing here. Missing (an older client): ARGV[8] as is.
-- returns  the shared state (see state_reply in _prelude.lua); `changed` is 1
--          when this report opened the breaker, which it also PUBLISHes;
--          then the pooled window: volume, failures, reporting pods, votes.
--
-- An entry (JSON) is appended unless the bucket is empty. Entries are in time
-- order, so the list is trimmed from the head: until the first young entry
-- (older than the window or than the last close is out), then, once the new
-- entry is in, down to max_entries: O(removed). Each popped entry is decoded, so the aggregates lose
-- exactly what the list loses.
--
-- Aggregates. KEYS[3] holds the sums over the entries in the list, so a
-- report is O(1) (plus O(removed)) however many pods report:
--   entries tail     the list length they describe and its last entry: a
--                    list of another length or tail was written by someone else
--   volume failures  pooled successes + failures, and failures
--   trips            entries with local_open and an epoch equal to `epoch`
--   epoch            the epoch trips are counted for
--   reporting votes  pods with volume or trips; pods voting under `rule`
--   rule             "<min_pod_volume> <error_threshold_percentage>" (ARGV)
--   unsorted         entries to pop from the head before the timestamps of
--                    the rest are in order again (Redis' clock stepped back)
--   latest           no entry in the list has a later timestamp
--   pod:<instance>   "<volume> <failures> <trips>" of a reporting pod (the
--                    others have none: HLEN tells a field gone or added)
-- Unparsable entries count nowhere. The aggregates are rebuilt from the list
-- (one LRANGE) when they cannot be trusted: missing or unparsable, another
-- list length or tail (another writer, an older version of this script, the
-- cleanup script), a pod missing or going negative, or a closed breaker whose
-- epoch is not theirs (after a close the list holds little by then: the
-- entries before closed_at were just popped). A hand-edited number that looks
-- right is not detected: delete the key and the next report rebuilds it. The
-- key goes when the list is empty.

local stats_key, state_key, pods_key = KEYS[1], KEYS[2], KEYS[3]
local instance = ARGV[1]
local counts = {
  fires = arg_number(2, 'fires'), successes = arg_number(3, 'successes'),
  failures = arg_number(4, 'failures'), timeouts = arg_number(5, 'timeouts'),
  rejects = arg_number(6, 'rejects'),
}
local local_open = ARGV[7] == '1'
local known_epoch = arg_number(8, 'epoch')
local jitter = arg_number(9, 'jitter')
local candidate_gen, channel, name = ARGV[10], ARGV[11], ARGV[12]
local known_gen = ARGV[26]
-- Same names and order as DecisionParams.ARGV_FIELDS (a test keeps them equal).
local PARAM_NAMES = {
  'window_ms', 'volume_threshold', 'error_threshold_percentage', 'quorum_count',
  'quorum_fraction', 'min_pod_volume', 'reset_timeout_ms', 'reset_timeout_multiplier',
  'max_reset_timeout_ms', 'half_open_max_calls', 'lease_ttl_ms', 'max_entries', 'key_ttl_ms',
}
local p, text = {}, {}
for i, param in ipairs(PARAM_NAMES) do
  p[param], text[param] = arg_number(12 + i, param), ARGV[12 + i]
end
-- A pod's vote depends on these two only (compared as the client wrote them).
local rule = text.min_pod_volume .. ' ' .. text.error_threshold_percentage

local POD_PREFIX = 'pod:'
-- No pod reports more than this many calls of one kind at once (10^8 in one
-- report interval); an entry claiming more is forged or corrupt and counts
-- nowhere.
local MAX_ENTRY_COUNT = 100000000
local HEADER = {
  'entries', 'volume', 'failures', 'trips', 'epoch', 'reporting', 'votes', 'unsorted', 'latest',
}

-- A stats entry as a table, or nil for anything that is not a v1 entry.
local function parse_entry(raw)
  local ok, e = pcall(cjson.decode, raw)
  if not ok or type(e) ~= 'table' or e.v ~= 1 or type(e.instance) ~= 'string' then
    return nil
  end
  e.timestamp, e.epoch = to_count(e.timestamp), to_count(e.epoch)
  e.successes, e.failures = to_count(e.successes), to_count(e.failures)
  if e.timestamp == nil or e.epoch == nil or e.successes == nil or e.failures == nil
      or e.successes > MAX_ENTRY_COUNT or e.failures > MAX_ENTRY_COUNT then
    return nil
  end
  e.local_open = e.local_open == true
  return e
end

local function is_failing(failures, volume)
  return volume > 0 and failures * 100 > p.error_threshold_percentage * volume
end

-- An idle pod (no completed calls, no trip) has no say.
local function is_reporting(pod)
  return pod.volume > 0 or pod.trips > 0
end

local function is_voting(pod)
  return pod.trips > 0 or (pod.volume >= p.min_pod_volume and is_failing(pod.failures, pod.volume))
end

local function fmt(n)
  return string.format('%.0f', n) -- every digit, never 1e+15
end

-- "<volume> <failures> <trips>" as a pod, or nil for garbage.
local function parse_pod(raw)
  if type(raw) ~= 'string' then
    return nil
  end
  local v, f, t = string.match(raw, '^(%d+) (%d+) (%d+)$')
  v, f, t = to_count(v), to_count(f), to_count(t)
  if v == nil or f == nil or t == nil or f > v then
    return nil
  end
  return { volume = v, failures = f, trips = t }
end

-- Aggregates of an empty list, counted for `epoch`. `replace`: on save the
-- hash is written from scratch rather than updated.
local function empty_aggregates(epoch)
  return {
    entries = 0, volume = 0, failures = 0, trips = 0, epoch = epoch, reporting = 0,
    votes = 0, unsorted = 0, latest = 0, rule = rule, tail = false, pods = {}, replace = true,
    dirty = true,
  }
end

-- Recounts the votes under this report's rule (another pod's options differ):
-- O(pods), no JSON. False when the pods do not add up to the pooled sums.
local function adopt_rule(a)
  local raw = redis.call('HGETALL', pods_key)
  local volume, failures, trips, reporting, votes = 0, 0, 0, 0, 0
  for i = 1, #raw, 2 do
    if string.sub(raw[i], 1, #POD_PREFIX) == POD_PREFIX then
      local pod = parse_pod(raw[i + 1])
      if pod == nil then
        return false
      end
      volume, failures, trips = volume + pod.volume, failures + pod.failures, trips + pod.trips
      reporting = reporting + (is_reporting(pod) and 1 or 0)
      votes = votes + (is_voting(pod) and 1 or 0)
    end
  end
  if volume ~= a.volume or failures ~= a.failures or trips ~= a.trips
      or reporting ~= a.reporting then
    return false
  end
  a.votes, a.rule, a.dirty = votes, rule, true
  return true
end

-- The stored aggregates if they describe a list of `length` entries and can
-- be used with state `s`; nil when they must be rebuilt.
local function load_aggregates(s, length)
  if length == 0 then
    return empty_aggregates(s.epoch) -- nothing to count, whatever is stored
  end
  if key_type(pods_key) ~= 'hash' then
    return nil
  end
  local raw = redis.call('HMGET', pods_key, 'rule', 'tail', unpack(HEADER))
  local a = { rule = raw[1], tail = raw[2], pods = {}, replace = false, dirty = false }
  for i, field in ipairs(HEADER) do
    a[field] = to_count(raw[i + 2])
    if a[field] == nil then
      return nil
    end
  end
  if type(a.rule) ~= 'string' or a.entries ~= length or a.unsorted > length
      or a.failures > a.volume or a.trips > length or a.votes > a.reporting
      or a.reporting > length or redis.call('LINDEX', stats_key, -1) ~= a.tail
      or redis.call('HLEN', pods_key) ~= #HEADER + 2 + a.reporting then
    return nil -- HLEN: one field per reporting pod, none missing, none more
  end
  -- Trips count for one epoch; a closed breaker decides on its own.
  if s.state == 'closed' and a.epoch ~= s.epoch then
    return nil
  end
  if a.rule ~= rule and not adopt_rule(a) then
    return nil
  end
  return a
end

local function pod_of(a, inst)
  local pod = a.pods[inst]
  if pod == nil then
    if a.replace then
      pod = { volume = 0, failures = 0, trips = 0 }
    else
      local raw = redis.call('HMGET', pods_key, POD_PREFIX .. inst)[1]
      if raw == false then
        pod = { volume = 0, failures = 0, trips = 0, missing = true }
      else
        pod = parse_pod(raw)
        if pod == nil then
          return nil
        end
      end
    end
    a.pods[inst] = pod
  end
  return pod
end

-- Adds (sign 1) or removes (sign -1) a parsed entry; false when the result
-- cannot be right (the aggregates were wrong before).
local function apply(a, e, sign)
  local volume, failures = e.successes + e.failures, e.failures
  local trips = (e.local_open and e.epoch == a.epoch) and 1 or 0
  if volume == 0 and trips == 0 then
    return true -- counts nowhere (failures <= volume)
  end
  local pod = pod_of(a, e.instance)
  if pod == nil or (sign < 0 and pod.missing) then
    return false
  end
  local was_reporting, was_voting = is_reporting(pod), is_voting(pod)
  pod.volume = pod.volume + sign * volume
  pod.failures = pod.failures + sign * failures
  pod.trips = pod.trips + sign * trips
  pod.missing, pod.dirty = nil, true
  a.volume = a.volume + sign * volume
  a.failures = a.failures + sign * failures
  a.trips = a.trips + sign * trips
  a.reporting = a.reporting + (is_reporting(pod) and 1 or 0) - (was_reporting and 1 or 0)
  a.votes = a.votes + (is_voting(pod) and 1 or 0) - (was_voting and 1 or 0)
  a.dirty = true
  return pod.failures >= 0 and pod.trips >= 0 and pod.failures <= pod.volume
    and a.failures >= 0 and a.failures <= a.volume and a.trips >= 0 and a.reporting >= 0
    and a.votes >= 0
end

-- Counts an entry (`raw`, parsed as `e`) just appended behind `before` others.
local function count_appended(a, raw, e, before)
  a.entries, a.tail, a.dirty = before + 1, raw, true
  if e == nil then
    return true
  end
  if e.timestamp < a.latest then
    a.unsorted = before -- everything before it may be later than it
  else
    a.latest = e.timestamp
  end
  return apply(a, e, 1)
end

local function count_popped(a, e)
  a.entries, a.dirty = a.entries - 1, true
  a.unsorted = math.max(0, a.unsorted - 1)
  if a.entries == 0 then
    a.latest = 0
  end
  return e == nil or apply(a, e, -1)
end

-- Aggregates of `raws` (list entries, oldest first) counted for `epoch`;
-- `keep(e)` picks the entries that count.
local function aggregate(raws, epoch, keep)
  local a = empty_aggregates(epoch)
  for i, raw in ipairs(raws) do
    local e = parse_entry(raw)
    if e ~= nil and not keep(e) then
      e = nil
    end
    count_appended(a, raw, e, i - 1)
  end
  return a
end

local function save_aggregates(a, ttl_ms)
  if a.entries == 0 then
    redis.call('DEL', pods_key)
    return
  end
  if not a.dirty then
    redis.call('PEXPIRE', pods_key, ttl_ms)
    return
  end
  local fields = { 'rule', a.rule, 'tail', a.tail }
  for _, field in ipairs(HEADER) do
    fields[#fields + 1] = field
    fields[#fields + 1] = fmt(a[field])
  end
  local gone = {}
  for inst, pod in pairs(a.pods) do
    if pod.dirty then
      if pod.volume == 0 and pod.failures == 0 and pod.trips == 0 then
        gone[#gone + 1] = POD_PREFIX .. inst
      else
        fields[#fields + 1] = POD_PREFIX .. inst
        fields[#fields + 1] = fmt(pod.volume) .. ' ' .. fmt(pod.failures) .. ' ' .. fmt(pod.trips)
      end
    end
  end
  if a.replace then
    redis.call('DEL', pods_key)
  elseif #gone > 0 then
    for i = 1, #gone, 1000 do
      redis.call('HDEL', pods_key, unpack(gone, i, math.min(i + 999, #gone)))
    end
  end
  -- In slices: unpack() of thousands of values would overflow Lua's C stack.
  for i = 1, #fields, 2000 do
    redis.call('HSET', pods_key, unpack(fields, i, math.min(i + 1999, #fields)))
  end
  redis.call('PEXPIRE', pods_key, ttl_ms)
end

-- Why the aggregates say the shared breaker should open, or nil.
local function decide(a)
  if p.quorum_count == 0 and p.quorum_fraction == 0 then
    -- A trip reported under an older epoch comes from a pod that has not
    -- heard of the latest close yet: it must not re-open the new period.
    if a.trips > 0 then
      return 'local_trip'
    end
    if a.volume >= p.volume_threshold and is_failing(a.failures, a.volume) then
      return 'pooled_rate'
    end
    return nil
  end
  -- Quorum: each pod votes on its own entries; the pooled rate has no say.
  local needed = p.quorum_count
  if needed == 0 then
    -- The epsilon keeps 0.28 * 25 (7.000000000000001 in doubles) at 7 votes.
    needed = math.max(1, math.ceil(p.quorum_fraction * a.reporting - 1e-9))
  end
  if a.votes >= needed then
    return 'quorum'
  end
  return nil
end

local now = now_ms()
local s, created = load_or_create(state_key, candidate_gen)
local entry_epoch = known_epoch
if known_gen ~= nil and known_gen ~= s.gen then
  entry_epoch = s.epoch
end

if key_type(stats_key) ~= 'list' then
  redis.call('DEL', stats_key) -- missing, or something that is not ours
end
local length = redis.call('LLEN', stats_key)
local a = load_aggregates(s, length) -- nil: rebuilt below, once the list is trimmed

-- Entries at or before the cutoff are out: older than the window, or from
-- before the last close (the window is cleared on close). Trimmed before
-- this report's entry goes in, which is young whatever its millisecond (a
-- report in the close's millisecond came after the close).
local cutoff = math.max(now - p.window_ms, s.closed_at)
while length > 0 do
  local e = parse_entry(redis.call('LINDEX', stats_key, 0))
  if e ~= nil and e.timestamp > cutoff then
    break
  end
  redis.call('LPOP', stats_key)
  length = length - 1
  if a ~= nil and not count_popped(a, e) then
    a = nil
  end
end

local nonempty = local_open
for _, n in pairs(counts) do
  nonempty = nonempty or n ~= 0
end
if nonempty then
  local raw = cjson.encode({
    v = 1, timestamp = now, instance = instance,
    fires = counts.fires, successes = counts.successes, failures = counts.failures,
    timeouts = counts.timeouts, rejects = counts.rejects,
    local_open = local_open, epoch = entry_epoch,
  })
  redis.call('RPUSH', stats_key, raw)
  -- Counted as it reads back, so adding and removing it agree to the digit.
  if a ~= nil and not count_appended(a, raw, parse_entry(raw), length) then
    a = nil
  end
  length = length + 1
end

-- The cap: the oldest go first.
while length > p.max_entries do
  local e = parse_entry(redis.call('LPOP', stats_key))
  length = length - 1
  if a ~= nil and not count_popped(a, e) then
    a = nil
  end
end

if a == nil then
  a = aggregate(redis.call('LRANGE', stats_key, 0, -1), s.epoch, function()
    return true
  end)
end

-- Pods whose own trip in the current epoch is in the window, counted against
-- the quorum. After an open period ended unused (a freeze kept every pod from
-- asking for a trial), the shared state still reads open: a new trip must
-- open it again at once, rather than wait for a trial nobody asks for. The
-- failures that opened it are history and re-open nothing on their own.
local function reopen_reason(reporting)
  local tripped, count = {}, 0
  for _, raw in ipairs(redis.call('LRANGE', stats_key, 0, -1)) do
    local e = parse_entry(raw)
    if e ~= nil and e.local_open and e.epoch == s.epoch and tripped[e.instance] == nil then
      tripped[e.instance] = true
      count = count + 1
    end
  end
  if count == 0 then
    return nil
  end
  if p.quorum_count == 0 and p.quorum_fraction == 0 then
    return 'local_trip'
  end
  local needed = p.quorum_count
  if needed == 0 then
    needed = math.max(1, math.ceil(p.quorum_fraction * math.max(reporting, count) - 1e-9))
  end
  if count >= needed then
    return 'quorum'
  end
  return nil
end

-- An open period over, or a half-open one with no trial under way.
local function unused_opening()
  if s.state == 'open' then
    return s.open_until <= now
  end
  return s.state == 'half_open' and latest_lease(s, now) == 0
end

-- Only a closed breaker, or an opening nobody uses, can be opened.
local changed = false
if s.state ~= 'closed' and local_open and unused_opening() then
  local reason = reopen_reason(a.reporting)
  if reason ~= nil then
    open_state(state_key, s, now, reason, p.reset_timeout_ms, p.reset_timeout_multiplier,
      p.max_reset_timeout_ms, jitter)
    changed = true
  end
elseif s.state == 'closed' then
  local judged = a
  if a.unsorted > 0 then
    -- Old entries behind a young head (a clock step back) are skipped, not
    -- trusted: count the young ones alone, until the old have been popped.
    judged = aggregate(redis.call('LRANGE', stats_key, 0, -1), s.epoch, function(e)
      return e.timestamp > cutoff
    end)
  end
  local reason = decide(judged)
  if reason ~= nil then
    open_state(state_key, s, now, reason, p.reset_timeout_ms, p.reset_timeout_multiplier,
      p.max_reset_timeout_ms, jitter)
    changed = true
  end
end

-- An idle tick changes nothing in the state hash: only its TTL is renewed.
if created or changed then
  save_state(state_key, s, now, p.key_ttl_ms)
else
  expire_state(state_key, s, now, p.key_ttl_ms)
end
redis.call('PEXPIRE', stats_key, p.key_ttl_ms)
save_aggregates(a, p.key_ttl_ms)
if changed then
  publish(channel, name, instance, s, now)
end
local reply = state_reply(s, now, changed)
for _, field in ipairs({ 'volume', 'failures', 'reporting', 'votes' }) do
  reply[#reply + 1] = a[field]
end
return reply
