-- The prelude of every delivery step (BEGIN, RELEASE_ATTEMPT, FINISH, OPERATE), run as one
-- script with it. The steps share one key layout:
-- KEYS[1]      the batch, rg:{p}:batch:<id>.<number>
-- KEYS[2]      its report, rg:{p}:report:<id>
-- KEYS[3]      the delivery stream, rg:{p}:deliveries
-- KEYS[4]      the retry set, rg:{p}:retries
-- KEYS[5]      the batch's attempts list, KEYS[1]:attempts
-- KEYS[6]      the batch's operator actions list, KEYS[1]:actions
-- KEYS[7..12]  the partner's batches by state, rg:{p}:batches:<state> (`STATE_INDEX` order)
-- KEYS[13..]   every batch of the report (for the roll-up)
--
-- Invariants: `move` keeps the state index true: every write of a batch's `state` in these
-- scripts goes with one call of it, so the index changes in the same atomic step as the state
-- it mirrors. `rollup` writes the report's status from its batches' states in the same step
-- as the change. Settling an entry is XACK + XDEL, first: XACK answers 0 rather than failing
-- when the group is gone, so nothing after it can be cut short.

local by_state = {queued = 7, sending = 8, retry_wait = 9, held = 10, rejected = 11, failed = 12}
local function move(batch, from, to, queued_at)
  if by_state[from] then redis.call('ZREM', KEYS[by_state[from]], batch) end
  if by_state[to] then
    local at = queued_at or redis.call('HGET', KEYS[1], 'queued_at') or '0'
    redis.call('ZADD', KEYS[by_state[to]], at, batch)
  end
end
local function rollup()
  local attention, delivered, queued, n = false, 0, 0, 0
  for i = 13, #KEYS do
    local s = redis.call('HGET', KEYS[i], 'state')
    n = n + 1
    if s == 'held' or s == 'rejected' or s == 'failed' then attention = true
    elseif s == 'delivered' then delivered = delivered + 1
    elseif s == 'queued' then queued = queued + 1 end
  end
  local status = 'delivering'
  if attention then status = 'needs_attention'
  elseif delivered == n then status = 'delivered'
  elseif queued == n then status = 'queued' end
  if status == 'delivered' and tonumber(redis.call('HGET', KEYS[2], 'refused') or '0') > 0 then
    status = 'delivered_with_problems'
  end
  redis.call('HSET', KEYS[2], 'status', status)
end
local function settle(entry)
  redis.call('XACK', KEYS[3], 'delivery', entry)
  redis.call('XDEL', KEYS[3], entry)
end
