-- report_window: append one pod's finished bucket, trim the window, decide.
--
-- KEYS[1]  stats list (<prefix>:{<name>}:distributedStats)
-- KEYS[2]  state hash (<prefix>:{<name>}:state)
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
-- returns  the shared state (see state_reply in _prelude.lua); `changed` is 1
--          when this report opened the breaker, which it also PUBLISHes.
--
-- An entry (JSON) is appended unless the bucket is empty; entries are in time
-- order, so entries older than the window or than the last close are popped
-- from the head until the first young one: O(removed).

local stats_key, state_key = KEYS[1], KEYS[2]
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
-- Same names and order as DecisionParams.ARGV_FIELDS (a test keeps them equal).
local PARAM_NAMES = {
  'window_ms', 'volume_threshold', 'error_threshold_percentage', 'quorum_count',
  'quorum_fraction', 'min_pod_volume', 'reset_timeout_ms', 'reset_timeout_multiplier',
  'max_reset_timeout_ms', 'half_open_max_calls', 'lease_ttl_ms', 'max_entries', 'key_ttl_ms',
}
local p = {}
for i, param in ipairs(PARAM_NAMES) do
  p[param] = arg_number(12 + i, param)
end

-- A stats entry as a table, or nil for anything that is not a v1 entry.
local function parse_entry(raw)
  local ok, e = pcall(cjson.decode, raw)
  if not ok or type(e) ~= 'table' or e.v ~= 1 or type(e.instance) ~= 'string' then
    return nil
  end
  e.timestamp, e.epoch = to_count(e.timestamp), to_count(e.epoch)
  e.successes, e.failures = to_count(e.successes), to_count(e.failures)
  if e.timestamp == nil or e.epoch == nil or e.successes == nil or e.failures == nil then
    return nil
  end
  e.local_open = e.local_open == true
  return e
end

local function is_failing(failures, volume)
  return volume > 0 and failures * 100 > p.error_threshold_percentage * volume
end

-- Why the entries say the shared breaker should open, or nil.
local function decide(entries, epoch)
  if p.quorum_count == 0 and p.quorum_fraction == 0 then
    local volume, failures = 0, 0
    for _, e in ipairs(entries) do
      -- A trip reported under an older epoch comes from a pod that has not
      -- heard of the latest close yet: it must not re-open the new period.
      if e.local_open and e.epoch == epoch then
        return 'local_trip'
      end
      volume = volume + e.successes + e.failures
      failures = failures + e.failures
    end
    if volume >= p.volume_threshold and is_failing(failures, volume) then
      return 'pooled_rate'
    end
    return nil
  end
  -- Quorum: each pod votes on its own entries; the pooled rate has no say.
  local pods = {}
  for _, e in ipairs(entries) do
    local pod = pods[e.instance]
    if pod == nil then
      pod = { volume = 0, failures = 0, tripped = false }
      pods[e.instance] = pod
    end
    pod.volume = pod.volume + e.successes + e.failures
    pod.failures = pod.failures + e.failures
    pod.tripped = pod.tripped or (e.local_open and e.epoch == epoch)
  end
  local votes, reporting = 0, 0
  for _, pod in pairs(pods) do
    if pod.tripped or pod.volume > 0 then
      reporting = reporting + 1 -- an idle pod has no say
    end
    if pod.tripped or (pod.volume >= p.min_pod_volume and is_failing(pod.failures, pod.volume)) then
      votes = votes + 1
    end
  end
  local needed = p.quorum_count
  if needed == 0 then
    -- The epsilon keeps 0.28 * 25 (7.000000000000001 in doubles) at 7 votes.
    needed = math.max(1, math.ceil(p.quorum_fraction * reporting - 1e-9))
  end
  if votes >= needed then
    return 'quorum'
  end
  return nil
end

local now = now_ms()
local s = load_or_create(state_key, candidate_gen)

if key_type(stats_key) ~= 'list' then
  redis.call('DEL', stats_key) -- missing, or something that is not ours
end
local nonempty = local_open
for _, n in pairs(counts) do
  nonempty = nonempty or n ~= 0
end
if nonempty then
  redis.call('RPUSH', stats_key, cjson.encode({
    v = 1, timestamp = now, instance = instance,
    fires = counts.fires, successes = counts.successes, failures = counts.failures,
    timeouts = counts.timeouts, rejects = counts.rejects,
    local_open = local_open, epoch = known_epoch,
  }))
end

-- Entries at or before the cutoff are out: older than the window, or from
-- before the last close (the window is cleared on close).
local cutoff = math.max(now - p.window_ms, s.closed_at)
while true do
  local head = redis.call('LINDEX', stats_key, 0)
  if not head then
    break
  end
  local e = parse_entry(head)
  if e ~= nil and e.timestamp > cutoff then
    break
  end
  redis.call('LPOP', stats_key)
end
redis.call('LTRIM', stats_key, -p.max_entries, -1)

-- Only a closed breaker can be opened, so only then are the entries read.
local changed = false
if s.state == 'closed' then
  local entries = {}
  for _, raw in ipairs(redis.call('LRANGE', stats_key, 0, -1)) do
    local e = parse_entry(raw)
    -- Old entries behind a young head (a clock step back) are skipped, not trusted.
    if e ~= nil and e.timestamp > cutoff then
      entries[#entries + 1] = e
    end
  end
  local reason = decide(entries, s.epoch)
  if reason ~= nil then
    open_state(state_key, s, now, reason, p.reset_timeout_ms, p.reset_timeout_multiplier,
      p.max_reset_timeout_ms, jitter)
    changed = true
  end
end

save_state(state_key, s, now, p.key_ttl_ms)
redis.call('PEXPIRE', stats_key, p.key_ttl_ms)
if changed then
  publish(channel, name, instance, s, now)
end
return state_reply(s, now, changed)
