-- BEGIN: writes `sending` before anything is sent (`begin_attempt`).
-- KEYS     the delivery layout (see rollup.lua)
-- ARGV[1]  the queue entry id
-- ARGV[2]  now (ms)
-- ARGV[3]  the result to record if the batch is held (JSON)
-- ARGV[4]  the batch id
-- ARGV[5]  the attempt record to keep if held (JSON, see `Attempt::unrecorded`)
-- ARGV[6]  now, as attempts write it
-- Answers {'send', attempt, budget_from, doc, queued_at} so the worker needs no second read,
-- {'held'}, or {'skip', state}.
--
-- Invariant: an upload is never sent twice without an operator. A batch is begun at most once
-- per queue entry: BEGIN moves it out of `queued`/`retry_wait` and writes this entry as its
-- `fence` in the same step. A batch found in `sending` under this entry (or with no fence)
-- was begun by a worker that never settled it: Kiva may have the upload, so it is held, never
-- sent again.

local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'retry_wait' then
  local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
  redis.call('HSET', KEYS[1], 'state', 'sending', 'fence', ARGV[1], 'sending_at', ARGV[6])
  redis.call('HDEL', KEYS[1], 'next_attempt_at')
  move(ARGV[4], state, 'sending')
  rollup()
  local f = redis.call('HMGET', KEYS[1], 'budget_from', 'doc', 'queued_at')
  return {'send', tostring(attempt), f[1] or '0', f[2] or '', f[3] or ''}
end
local fence = redis.call('HGET', KEYS[1], 'fence')
if state == 'sending' and (not fence or fence == ARGV[1]) then
  -- This very entry was begun by a worker that never settled it (it died, or overran the
  -- claim deadline): Kiva may have processed the upload, and a second one would be counted
  -- twice. (No fence: written before fences existed; the same reasoning holds.)
  settle(ARGV[1])
  -- The attempt's own record never came: keep one that says when it began (ARGV[5] is its
  -- template, started now, for a batch begun before `sending_at` was kept).
  local begun = redis.call('HMGET', KEYS[1], 'attempt', 'sending_at')
  local record = cjson.decode(ARGV[5])
  record.number = tonumber(begun[1]) or 0
  if begun[2] then record.started_at = begun[2] end
  redis.call('RPUSH', KEYS[5], cjson.encode(record))
  redis.call('HSET', KEYS[1], 'state', 'held', 'result', ARGV[3])
  redis.call('HDEL', KEYS[1], 'fence')
  move(ARGV[4], 'sending', 'held')
  rollup()
  return {'held'}
end
-- Settled already, or being sent under another entry by a live worker: a stale entry.
settle(ARGV[1])
return {'skip', state or 'missing'}
