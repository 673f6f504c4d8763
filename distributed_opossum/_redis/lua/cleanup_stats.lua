-- cleanup_stats: the operator's cleanup of one breaker's stats list.
--
-- KEYS[1]  stats list (<prefix>:{<name>}:distributedStats)
-- ARGV[1]  max_age_ms: entries older than this are removed (1800000 = 30 min
--          when empty)
-- returns  the number of entries removed
--
-- Entries are appended in time order, so only the head is examined and the
-- loop stops at the first young entry: O(removed), never a scan of the whole
-- list. Unparsable entries at the head go too. report_window already trims
-- as it appends; this is for lists of breakers nobody reports any more. The
-- next report sees the list changed behind its sums and rebuilds them (a
-- bounded number of entries per report).

local key = KEYS[1]
local max_age_ms = 1800000
if ARGV[1] ~= nil and ARGV[1] ~= '' then
  max_age_ms = arg_number(1, 'max_age_ms')
end
if key_type(KEYS[1]) ~= 'list' then
  return 0
end

local cutoff = now_ms() - max_age_ms
local removed = 0
while true do
  local head = redis.call('LINDEX', key, 0)
  if not head then
    break
  end
  local ok, e = pcall(cjson.decode, head)
  local timestamp = ok and type(e) == 'table' and to_count(e.timestamp) or nil
  if timestamp ~= nil and timestamp >= cutoff then
    break
  end
  redis.call('LPOP', key)
  removed = removed + 1
end
return removed
