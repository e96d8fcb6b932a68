-- SUMMARY: the queue gauges, from the state index; builds the index first if it is not
-- complete (`queue_summary`). No `#!lua`: the build reads keys it can't declare.
-- KEYS[1..6]  the partner's batches by state, rg:{p}:batches:<state> (`STATE_INDEX` order)
-- KEYS[7]     the index's marker, rg:{p}:batches:indexed
-- KEYS[8]     the partner's reports index
-- ARGV[1]     the partner's key prefix, rg:{p}:
-- ARGV[2..7]  the state names, in KEYS order
-- Answers a flat list: state, count, earliest known queued_at (ms, or ''), per state.
--
-- Invariant: the counts are the batches' states as of one moment. The build reads report and
-- batch keys made from ARGV[1]: not declared (their ids are only known inside), but in the
-- partner's slot like the declared ones, so it runs unchanged on Redis Cluster. Report ids
-- come from the index's members, batch numbers count up from 1 until a batch key is missing
-- (ids are never parsed out of key names). The marker is set last: a build cut short leaves
-- none, and is done again whole.

if redis.call('EXISTS', KEYS[7]) == 0 then
  local slot = {}
  for i = 1, 6 do
    redis.call('DEL', KEYS[i])
    slot[ARGV[1 + i]] = i
  end
  for _, id in ipairs(redis.call('ZRANGE', KEYS[8], 0, -1)) do
    local status = redis.call('HGET', ARGV[1] .. 'report:' .. id, 'status')
    if status and status ~= 'delivered' and status ~= 'delivered_with_problems' then
      local n = 1
      while true do
        local batch = id .. '.' .. n
        local f = redis.call('HMGET', ARGV[1] .. 'batch:' .. batch, 'state', 'queued_at')
        if not f[1] then break end
        if slot[f[1]] then redis.call('ZADD', KEYS[slot[f[1]]], f[2] or '0', batch) end
        n = n + 1
      end
    end
  end
  redis.call('SET', KEYS[7], '1')
end
local reply = {}
for i = 1, 6 do
  local count = redis.call('ZCARD', KEYS[i])
  local oldest = ''
  if count > 0 then
    -- A score of 0 is a batch whose queued_at was never written: counted, but no age.
    local first = redis.call('ZRANGEBYSCORE', KEYS[i], '(0', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if first[2] then oldest = first[2] end
  end
  table.insert(reply, ARGV[1 + i])
  table.insert(reply, tostring(count))
  table.insert(reply, oldest)
end
return reply
