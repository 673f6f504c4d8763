-- report_window: append one pod's finished bucket, trim the window, decide.
--
-- KEYS[1]  stats list (<prefix>:{<name>}:distributedStats)
-- KEYS[2]  state hash (<prefix>:{<name>}:state)
-- KEYS[3]  sums hash (<prefix>:{<name>}:pods), see "Sums" below
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
-- ARGV[27] gen the pod currently knows ('' before its first sync). A trip
--          vote from a pod that knew another history (Redis lost the state
--          since, or the pod never synced) counts in the current one: its
--          epoch means nothing here.
-- returns  the shared state (see state_reply in _prelude.lua); `changed` is 1
--          when this report opened the breaker, which it also PUBLISHes;
--          then the pooled window: volume, failures, reporting pods, votes.
--
-- The list. One entry (JSON, see ARCHITECTURE) per non-empty report, in time
-- order: it is the record of every pod's reports over the window, and the
-- decisions are those over its entries. A report does not read it whole: the
-- sums below follow it, O(1) per report (an entry in, the aged ones out).
-- Entries at the head older than the window or than the last close leave
-- (peeked four at a time, popped in one LPOP); a close deletes the list and
-- its sums in the closing script (finish_trial, reset), so the first report
-- after a close finds them empty. The length is capped, oldest first, at
-- max(max_entries, (pods in the list + 1) * pod_entries): pod_entries is what
-- one pod writes in a window (one entry per bucket, twice over, plus trip
-- reports), so the cap grows with the fleet and never cuts the window short;
-- it bounds garbage and forged entries, which belong to no pod.
-- Two rare cases still read the list whole: entries out of order (Redis'
-- clock stepped back) are judged by reading the window until they have left
-- it, and a trip on an opening nobody used counts the current epoch's trips.
--
-- Sums. KEYS[3] holds the sums over the entries in the list:
--   entries tail     the list length they describe and its last entry: a
--                    list of another length or tail was written by someone else
--   volume failures  pooled successes + failures, and failures
--   trips            entries with local_open and an epoch equal to `epoch`
--   epoch            the epoch trips are counted for
--   reporting        pods with volume or trips (an idle pod has no say)
--   listed           pods with at least one entry (one pod:<instance> each)
--   counted          entries (from the head) the sums include: less than
--                    `entries` while a rebuild is under way
--   rule votes       "<min_pod_volume> <error_threshold_percentage>" of the
--                    latest report (as ARGV), and the pods voting under it
--   others           up to three more rules with their votes,
--                    "<rule>=<votes>;...", most recent first: pods running
--                    other options (a rolling deploy) do not force a recount
--   unsorted         entries to pop from the head before the timestamps of
--                    the rest are in order again (Redis' clock stepped back)
--   latest           no entry in the list has a later timestamp
--   refreshed        ms of the last TTL refresh of the three keys
--   check            a weighted sum of the counts above (refreshed aside)
--   pod:<instance>   "<volume> <failures> <trips> <entries>" of a listed pod
-- Unparsable entries count nowhere. The sums are rebuilt from the list,
-- REBUILD_STEP entries a report (whichever pod sends it), when they cannot
-- be trusted: missing or unparsable, another list length or tail (another
-- writer, an older version of this script, the cleanup script), a pod missing
-- or going negative, a closed breaker whose epoch is not theirs (a close by
-- an older version), or `check` not matching. Until every entry is counted,
-- the window decides nothing; a report's own trip still opens (without
-- quorum, or with a quorum of one).
-- A rule none of the four knows is counted once from the pod fields (O(pods),
-- no list). Hand edits that keep every check are not detected: delete the
-- key and the next report rebuilds it. The key goes when the list is empty.
--
-- TTLs. The three keys are refreshed when a quarter of key_ttl_ms has passed
-- since `refreshed` (every report while the list is empty, every state
-- change, and while the breaker is not closed), so they outlive any idle
-- period shorter than three quarters of key_ttl_ms.

local stats_key, state_key, pods_key = KEYS[1], KEYS[2], KEYS[3]
local instance = ARGV[1]
local fires = arg_number(2, 'fires')
local successes = arg_number(3, 'successes')
local failures = arg_number(4, 'failures')
local timeouts = arg_number(5, 'timeouts')
local rejects = arg_number(6, 'rejects')
local local_open = ARGV[7] == '1'
local known_epoch = arg_number(8, 'epoch')
local jitter = arg_number(9, 'jitter')
local candidate_gen, channel, name = ARGV[10], ARGV[11], ARGV[12]
local known_gen = ARGV[27]
-- Same names and order as DecisionParams.ARGV_FIELDS (a test keeps them equal).
local PARAM_NAMES = {
  'window_ms', 'volume_threshold', 'error_threshold_percentage', 'quorum_count',
  'quorum_fraction', 'min_pod_volume', 'reset_timeout_ms', 'reset_timeout_multiplier',
  'max_reset_timeout_ms', 'half_open_max_calls', 'lease_ttl_ms', 'max_entries', 'key_ttl_ms',
  'pod_entries',
}
-- Only an opening reads the backoff; half_open_max_calls and lease_ttl_ms
-- are for the trial scripts, min_pod_volume goes into the rule as text.
local LATER = {
  reset_timeout_ms = true, reset_timeout_multiplier = true, max_reset_timeout_ms = true,
  half_open_max_calls = true, lease_ttl_ms = true, min_pod_volume = true,
}
local p = {}
for i = 1, #PARAM_NAMES do
  if not LATER[PARAM_NAMES[i]] then
    p[PARAM_NAMES[i]] = arg_number(12 + i, PARAM_NAMES[i])
  end
end

-- A pod's vote depends on these two only (compared as the client wrote them).
local rule = ARGV[18] .. ' ' .. ARGV[15]

local POD_PREFIX = 'pod:'
-- No pod reports more than this many calls of one kind at once (10^8 in one
-- report interval); an entry claiming more is forged or corrupt and counts
-- nowhere.
local MAX_ENTRY_COUNT = 100000000
local MAX_OTHER_RULES = 3
local PEEK = 4
-- Entries a report counts towards sums being rebuilt: a window of this many
-- entries or fewer is rebuilt at once.
local REBUILD_STEP = 256
local HEADER = {
  'rule', 'tail', 'others', 'entries', 'volume', 'failures', 'trips', 'epoch', 'reporting',
  'listed', 'counted', 'votes', 'unsorted', 'latest', 'refreshed', 'check',
}
local COUNTS_FROM = 4 -- HEADER[4..] are counts
-- `check` is a weighted sum of the counts (refreshed aside): a field edited
-- or lost on its own is noticed, as a length or tail that does not match is.
local CHECKED = {
  entries = 1, volume = 3, failures = 5, trips = 7, epoch = 11, reporting = 13, listed = 17,
  votes = 19, unsorted = 23, latest = 29, counted = 31,
}

local function checksum(a)
  local sum = 0
  for field, weight in pairs(CHECKED) do
    sum = (sum + weight * a[field]) % 1000000007
  end
  return sum
end

local function fmt(n)
  return string.format('%.0f', n) -- every digit, never 1e+15
end

-- A stats entry as a table, or nil for anything that is not a v1 entry.
-- (cjson: in Redis' Lua it costs less than one string.match of the entry.)
local function parse_entry(raw)
  local ok, e = pcall(cjson.decode, raw)
  if not ok or type(e) ~= 'table' or e.v ~= 1 or type(e.instance) ~= 'string' then
    return nil
  end
  e.timestamp, e.epoch = to_count(e.timestamp), to_count(e.epoch)
  e.successes, e.failures = to_count(e.successes), to_count(e.failures)
  e.local_open = e.local_open == true
  if e.timestamp == nil or e.epoch == nil or e.successes == nil or e.failures == nil
      or e.successes > MAX_ENTRY_COUNT or e.failures > MAX_ENTRY_COUNT then
    return nil
  end
  return e
end

local function is_failing(f, volume, threshold)
  return volume > 0 and f * 100 > threshold * volume
end

-- An idle pod (no completed calls, no trip) has no say.
local function is_reporting(pod)
  return pod.volume > 0 or pod.trips > 0
end

-- A rule as numbers: { text, min_pod_volume, threshold, votes }, or nil.
local function parse_rule(text, votes)
  local mpv, thr = string.match(text, '^(%S+) (%S+)$')
  mpv, thr = tonumber(mpv), tonumber(thr)
  if mpv == nil or thr == nil or mpv ~= mpv or thr ~= thr then
    return nil
  end
  return { text = text, mpv = mpv, thr = thr, votes = votes }
end

local function votes_under(r, pod)
  return pod.trips > 0 or (pod.volume >= r.mpv and is_failing(pod.failures, pod.volume, r.thr))
end

-- "<volume> <failures> <trips> <entries>" as a pod, or nil for garbage.
local function parse_pod(raw)
  if type(raw) ~= 'string' then
    return nil
  end
  local v, f, t, n = string.match(raw, '^(%d+) (%d+) (%d+) (%d+)$')
  v, f, t, n = to_count(v), to_count(f), to_count(t), to_count(n)
  if v == nil or f == nil or t == nil or n == nil or f > v or n == 0 then
    return nil
  end
  return { volume = v, failures = f, trips = t, entries = n }
end

-- Sums of an empty list, counted for `epoch`, under this report's rule only.
-- `replace`: on save the hash is written from scratch rather than updated.
local function empty_sums(epoch)
  return {
    entries = 0, volume = 0, failures = 0, trips = 0, epoch = epoch, reporting = 0,
    listed = 0, counted = 0, unsorted = 0, latest = 0, refreshed = 0, tail = false,
    rules = { parse_rule(rule, 0) }, pods = {}, replace = true, dirty = true,
  }
end

-- Recounts the votes under this report's rule from the pod fields: O(pods),
-- no list. False when the pods do not add up to the pooled sums.
local function count_rule(a, r)
  local raw = redis.call('HGETALL', pods_key)
  local volume, f, trips, reporting, listed, votes = 0, 0, 0, 0, 0, 0
  for i = 1, #raw, 2 do
    if string.sub(raw[i], 1, #POD_PREFIX) == POD_PREFIX then
      local pod = parse_pod(raw[i + 1])
      if pod == nil then
        return false
      end
      volume, f, trips = volume + pod.volume, f + pod.failures, trips + pod.trips
      listed = listed + 1
      reporting = reporting + (is_reporting(pod) and 1 or 0)
      votes = votes + (votes_under(r, pod) and 1 or 0)
    end
  end
  r.votes = votes
  return volume == a.volume and f == a.failures and trips == a.trips
    and reporting == a.reporting and listed == a.listed
end

-- Puts this report's rule first (the decision reads rules[1]), counting it
-- when it is new; the least recent beyond MAX_OTHER_RULES + 1 is dropped.
local function adopt_rule(a)
  if a.rules[1].text == rule then
    return true
  end
  local found
  for i = 2, #a.rules do
    if a.rules[i].text == rule then
      found = table.remove(a.rules, i)
      break
    end
  end
  if found == nil then
    found = parse_rule(rule, 0)
    if not count_rule(a, found) then
      return false
    end
  end
  table.insert(a.rules, 1, found)
  a.rules[MAX_OTHER_RULES + 2] = nil
  a.dirty = true
  return true
end

-- The stored sums if they describe a list of `length` entries ending with
-- `tail`, usable with state `s`; nil when they must be rebuilt. Reads the
-- pods of `instances` (a set) along.
local function load_sums(s, length, tail, instances)
  if length == 0 then
    return empty_sums(s.epoch) -- nothing to count, whatever is stored
  end
  local fields = { 'HMGET', pods_key }
  for i = 1, #HEADER do
    fields[i + 2] = HEADER[i]
  end
  local names = {}
  for inst in pairs(instances) do
    names[#names + 1] = inst
    fields[#fields + 1] = POD_PREFIX .. inst
  end
  local raw = redis.pcall(unpack(fields))
  if raw.err ~= nil then
    return nil -- not a hash
  end
  local a = { tail = raw[2], pods = {}, replace = false, dirty = false }
  for i = COUNTS_FROM, #HEADER do
    a[HEADER[i]] = to_count(raw[i])
    if a[HEADER[i]] == nil then
      return nil
    end
  end
  if type(raw[1]) ~= 'string' or type(raw[3]) ~= 'string' or a.tail ~= tail
      or a.entries ~= length or a.counted > length or a.unsorted > a.counted
      or a.failures > a.volume or a.trips > a.counted or a.reporting > a.listed
      or a.listed > a.counted
      or a.check ~= checksum(a) or (s.state == 'closed' and a.epoch ~= s.epoch) then
    return nil -- trips count for one epoch; a closed breaker decides on its own
  end
  local first = parse_rule(raw[1], a.votes)
  if first == nil or a.votes > a.reporting then
    return nil
  end
  a.rules = { first }
  for text, votes in string.gmatch(raw[3], '([^;=]+)=(%d+)') do
    local r = parse_rule(text, to_count(votes))
    if r == nil or r.votes == nil or r.votes > a.reporting or #a.rules > MAX_OTHER_RULES then
      return nil
    end
    a.rules[#a.rules + 1] = r
  end
  -- One field per listed pod, none missing, none more.
  if redis.call('HLEN', pods_key) ~= #HEADER + a.listed then
    return nil
  end
  for i, inst in ipairs(names) do
    local value = raw[#HEADER + i]
    if value == false then
      a.pods[inst] = { volume = 0, failures = 0, trips = 0, entries = 0, missing = true }
    else
      a.pods[inst] = parse_pod(value)
      if a.pods[inst] == nil then
        return nil
      end
    end
  end
  if not adopt_rule(a) then
    return nil
  end
  return a
end

local function pod_of(a, inst)
  local pod = a.pods[inst]
  if pod == nil then
    if a.replace then
      pod = { volume = 0, failures = 0, trips = 0, entries = 0 }
    else
      -- Not read along (a pod met while capping): one more read.
      local raw = redis.call('HMGET', pods_key, POD_PREFIX .. inst)[1]
      if raw == false then
        pod = { volume = 0, failures = 0, trips = 0, entries = 0, missing = true }
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
-- cannot be right (the sums were wrong before).
local function apply(a, e, sign)
  local volume, f = e.successes + e.failures, e.failures
  local trips = (e.local_open and e.epoch == a.epoch) and 1 or 0
  local pod = pod_of(a, e.instance)
  if pod == nil or (sign < 0 and pod.missing) then
    return false
  end
  local was_listed, was_reporting = pod.entries > 0, is_reporting(pod)
  local rules = a.rules
  local was_voting = {}
  for i = 1, #rules do
    was_voting[i] = votes_under(rules[i], pod)
  end
  pod.volume = pod.volume + sign * volume
  pod.failures = pod.failures + sign * f
  pod.trips = pod.trips + sign * trips
  pod.entries = pod.entries + sign
  pod.missing, pod.dirty = nil, true
  a.volume = a.volume + sign * volume
  a.failures = a.failures + sign * f
  a.trips = a.trips + sign * trips
  a.listed = a.listed + (pod.entries > 0 and 1 or 0) - (was_listed and 1 or 0)
  a.reporting = a.reporting + (is_reporting(pod) and 1 or 0) - (was_reporting and 1 or 0)
  for i = 1, #rules do
    rules[i].votes = rules[i].votes + (votes_under(rules[i], pod) and 1 or 0)
      - (was_voting[i] and 1 or 0)
    if rules[i].votes < 0 then
      return false
    end
  end
  a.dirty = true
  return pod.failures >= 0 and pod.trips >= 0 and pod.entries >= 0
    and pod.failures <= pod.volume and (pod.entries > 0 or pod.volume + pod.trips == 0)
    and a.failures >= 0 and a.failures <= a.volume and a.trips >= 0 and a.reporting >= 0
    and a.listed >= 0
end

-- Counts an entry (`raw`, parsed as `e`) just appended behind `before` others.
local function count_appended(a, raw, e, before)
  a.entries, a.counted, a.tail, a.dirty = before + 1, before + 1, raw, true
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
  if a.counted == 0 then
    return true -- not counted yet (a rebuild under way)
  end
  a.counted = a.counted - 1
  a.unsorted = math.max(0, a.unsorted - 1)
  if a.counted == 0 then
    a.latest = 0
  end
  return e == nil or apply(a, e, -1)
end

-- Counts the next entry of a rebuild (the one at index `counted`).
local function count_next(a, raw)
  local e = parse_entry(raw)
  local before = a.counted
  a.counted, a.dirty = before + 1, true
  if e == nil then
    return true
  end
  if e.timestamp < a.latest then
    a.unsorted = before
  else
    a.latest = e.timestamp
  end
  return apply(a, e, 1)
end

-- Sums that will describe the `length` entries of the list once counted, a
-- rebuild's worth of them per report.
local function rebuild(length, last, epoch)
  local a = empty_sums(epoch)
  a.entries, a.tail = length, last or false
  return a
end

-- Sums of `raws` (list entries, oldest first) counted for `epoch`;
-- `keep(e)` picks the entries that count.
local function aggregate(raws, epoch, keep)
  local a = empty_sums(epoch)
  for i, raw in ipairs(raws) do
    local e = parse_entry(raw)
    if e ~= nil and not keep(e) then
      e = nil
    end
    count_appended(a, raw, e, i - 1)
  end
  return a
end

local function save_sums(a)
  if a.entries == 0 then
    redis.call('DEL', pods_key)
    return
  end
  if not a.dirty then
    return
  end
  local others = {}
  for i = 2, #a.rules do
    others[#others + 1] = a.rules[i].text .. '=' .. fmt(a.rules[i].votes)
  end
  a.rule, a.votes, a.others = a.rules[1].text, a.rules[1].votes, table.concat(others, ';')
  a.check = checksum(a)
  local fields = { 'rule', a.rule, 'tail', a.tail, 'others', a.others }
  for i = COUNTS_FROM, #HEADER do
    fields[#fields + 1] = HEADER[i]
    fields[#fields + 1] = fmt(a[HEADER[i]])
  end
  local gone = {}
  for inst, pod in pairs(a.pods) do
    if pod.dirty then
      if pod.entries == 0 then
        gone[#gone + 1] = POD_PREFIX .. inst
      else
        fields[#fields + 1] = POD_PREFIX .. inst
        fields[#fields + 1] = fmt(pod.volume) .. ' ' .. fmt(pod.failures) .. ' '
          .. fmt(pod.trips) .. ' ' .. fmt(pod.entries)
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
end

-- Why the sums say the shared breaker should open, or nil.
local function decide(a)
  if p.quorum_count == 0 and p.quorum_fraction == 0 then
    -- A trip reported under an older epoch comes from a pod that has not
    -- heard of the latest close yet: it must not re-open the new period.
    if a.trips > 0 then
      return 'local_trip'
    end
    if a.volume >= p.volume_threshold
        and is_failing(a.failures, a.volume, p.error_threshold_percentage) then
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
  if a.rules[1].votes >= needed then
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

-- The new entry goes in first (RPUSH answers the length, and a key of
-- another type fails it); the trim below stops before it.
local raw_entry, own_entry
if local_open or fires ~= 0 or successes ~= 0 or failures ~= 0 or timeouts ~= 0
    or rejects ~= 0 then
  local quoted = '"' .. instance .. '"'
  if string.find(instance, '[^%w%-%._:#@/+=]') then
    quoted = cjson.encode(instance)
  end
  local ts, ok, bad, ep = fmt(now), fmt(successes), fmt(failures), fmt(entry_epoch)
  raw_entry = '{"v":1,"timestamp":' .. ts .. ',"instance":' .. quoted
    .. ',"fires":' .. fmt(fires) .. ',"successes":' .. ok .. ',"failures":' .. bad
    .. ',"timeouts":' .. fmt(timeouts) .. ',"rejects":' .. fmt(rejects)
    .. ',"local_open":' .. tostring(local_open) .. ',"epoch":' .. ep .. '}'
  -- The entry as parse_entry reads it back (the same digits), without cjson.
  own_entry = {
    timestamp = to_count(ts), instance = instance, successes = to_count(ok),
    failures = to_count(bad), local_open = local_open, epoch = to_count(ep),
  }
  if own_entry.timestamp == nil or own_entry.epoch == nil or own_entry.successes == nil
      or own_entry.failures == nil or own_entry.successes > MAX_ENTRY_COUNT
      or own_entry.failures > MAX_ENTRY_COUNT then
    own_entry = nil
  end
end
local length, tail
if raw_entry ~= nil then
  length = redis.pcall('RPUSH', stats_key, raw_entry)
  if type(length) == 'table' then
    redis.call('DEL', stats_key) -- something that is not ours
    length = redis.call('RPUSH', stats_key, raw_entry)
  end
  length = length - 1 -- before the new entry
  if length > 0 then
    tail = redis.call('LINDEX', stats_key, -2)
  end
else
  length = redis.pcall('LLEN', stats_key)
  if type(length) == 'table' then
    redis.call('DEL', stats_key)
    length = 0
  elseif length > 0 then
    tail = redis.call('LINDEX', stats_key, -1)
  end
end

-- Entries at or before the cutoff are out: older than the window, or from
-- before the last close (the window is cleared on close). The new entry is
-- young whatever its millisecond (a report in the close's millisecond came
-- after the close), so the trim stops before it.
local cutoff = math.max(now - p.window_ms, s.closed_at)
-- The aged entries among the first PEEK of the list (false: unparsable), in
-- order; `wanted` (if given) gets their pods.
local function peek_aged(wanted)
  local aged = {}
  if length == 0 then
    return aged
  end
  local head = redis.call('LRANGE', stats_key, 0, math.min(PEEK, length) - 1)
  for i = 1, #head do
    local e = parse_entry(head[i])
    if e ~= nil and e.timestamp > cutoff then
      break
    end
    aged[i] = e or false
    if e ~= nil and wanted ~= nil then
      wanted[e.instance] = true
    end
  end
  return aged
end

local wanted = {}
local aged = peek_aged(wanted)
if raw_entry ~= nil then
  wanted[instance] = true
end

local a = load_sums(s, length, tail, wanted) -- nil: rebuilt below, once the list is trimmed
while #aged > 0 do
  redis.call('LPOP', stats_key, #aged)
  length = length - #aged
  for i = 1, #aged do
    if a ~= nil and not count_popped(a, aged[i] or nil) then
      a = nil
    end
  end
  if #aged < PEEK or length == 0 then
    break
  end
  -- Four aged in a row: a long idle period or a clock step; peek again.
  aged = peek_aged(nil)
end

if raw_entry ~= nil then
  if a ~= nil and a.counted < a.entries then
    a.entries, a.tail, a.dirty = a.entries + 1, raw_entry, true -- its turn comes
  elseif a ~= nil and not count_appended(a, raw_entry, own_entry, length) then
    -- Counted as it reads back (own_entry), so adding and removing it agree.
    a = nil
  end
  length = length + 1
end

-- Sums that cannot be trusted are rebuilt from the list, REBUILD_STEP
-- entries a report (whichever pod sends it), so no report reads a long list
-- whole; until every entry is counted, only this report's own trip decides.
if a == nil then
  local last = raw_entry
  if last == nil and length > 0 then
    last = redis.call('LINDEX', stats_key, -1)
  end
  a = rebuild(length, last, s.epoch)
end
if a.counted < a.entries then
  local raws = redis.call('LRANGE', stats_key, a.counted, a.counted + REBUILD_STEP - 1)
  for i = 1, #raws do
    if not count_next(a, raws[i]) then
      a = rebuild(length, raw_entry or redis.call('LINDEX', stats_key, -1), s.epoch)
      break
    end
  end
end
local complete = a.counted == a.entries

-- The cap: the oldest go first (once every entry is counted).
local function cap(listed)
  return math.max(p.max_entries, (listed + 1) * p.pod_entries)
end
if complete and length > cap(a.listed) then
  local over = length - cap(a.listed)
  while over > 0 do
    local popped = redis.call('LPOP', stats_key, math.min(over, 1000))
    length = length - #popped
    for i = 1, #popped do
      if not count_popped(a, parse_entry(popped[i])) then
        over = -1
        break
      end
    end
    if over < 0 then
      a, complete = rebuild(length, redis.call('LINDEX', stats_key, -1), s.epoch), false
      break
    end
    over = length - cap(a.listed)
  end
end

-- Pods whose own trip in the current epoch is in the window, counted against
-- the quorum. After an open period ended unused (a freeze kept every pod from
-- asking for a trial), the shared state still reads open: a new trip must
-- open it again at once, rather than wait for a trial nobody asks for. The
-- failures that opened it are history and re-open nothing on their own.
-- Reads the list: a trip on an unused opening is rare.
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

local function open_now(reason)
  open_state(state_key, s, now, reason, arg_number(19, 'reset_timeout_ms'),
    arg_number(20, 'reset_timeout_multiplier'), arg_number(21, 'max_reset_timeout_ms'), jitter)
end

-- Only a closed breaker, or an opening nobody uses, can be opened.
local changed = false
if s.state ~= 'closed' and local_open and unused_opening() then
  local reason = reopen_reason(a.reporting)
  if reason ~= nil then
    open_now(reason)
    changed = true
  end
elseif s.state == 'closed' then
  local reason
  if not complete then
    -- A rebuild under way: the window is not known yet; this report's own
    -- trip is, and is all a trip (or a quorum of one) needs.
    if local_open and entry_epoch == s.epoch then
      if p.quorum_count == 0 and p.quorum_fraction == 0 then
        reason = 'local_trip'
      elseif p.quorum_count == 1 then
        reason = 'quorum'
      end
    end
  elseif a.unsorted > 0 then
    -- Old entries behind a young head (a clock step back) are skipped, not
    -- trusted: count the young ones alone, until the old have been popped.
    reason = decide(aggregate(redis.call('LRANGE', stats_key, 0, -1), s.epoch, function(e)
      return e.timestamp > cutoff
    end))
  else
    reason = decide(a)
  end
  if reason ~= nil then
    open_now(reason)
    changed = true
  end
end

-- TTLs: refreshed every quarter of key_ttl_ms while the breaker is closed
-- and its sums exist; an idle tick changes nothing in the state hash.
local refresh = created or changed or s.state ~= 'closed' or a.entries == 0
  or now - a.refreshed >= p.key_ttl_ms / 4 or a.refreshed > now
if created or changed then
  save_state(state_key, s, now, p.key_ttl_ms)
elseif refresh then
  expire_state(state_key, s, now, p.key_ttl_ms)
end
if refresh and a.entries > 0 then
  a.refreshed, a.dirty = now, true
end
save_sums(a)
if refresh and a.entries > 0 then
  redis.call('PEXPIRE', stats_key, p.key_ttl_ms)
  redis.call('PEXPIRE', pods_key, p.key_ttl_ms)
end
if changed then
  publish(channel, name, instance, s, now)
end
local reply = state_reply(s, now, changed)
reply[12], reply[13], reply[14], reply[15] = a.volume, a.failures, a.reporting, a.rules[1].votes
return reply
