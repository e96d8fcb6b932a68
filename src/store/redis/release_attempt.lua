-- RELEASE_ATTEMPT: undoes a BEGIN whose answer was lost, so the worker sent nothing
-- (`release_attempt`).
-- KEYS     the delivery layout (see rollup.lua)
-- ARGV[1]  the queue entry id
-- ARGV[2]  the batch id
-- Answers 'released', 'requeued' or 'left'.
--
-- Invariant: only the entry's own `sending` is undone (state and fence checked in the same
-- step), and XACK tells whether the entry was still pending, so a repeated release can't
-- queue the batch twice; a batch someone else moved on is left alone.

local pending = redis.call('XACK', KEYS[3], 'delivery', ARGV[1])
redis.call('XDEL', KEYS[3], ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'sending' and redis.call('HGET', KEYS[1], 'fence') == ARGV[1] then
  -- The attempt BEGIN counted never happened.
  redis.call('HINCRBY', KEYS[1], 'attempt', -1)
  redis.call('HSET', KEYS[1], 'state', 'queued')
  redis.call('HDEL', KEYS[1], 'fence')
  move(ARGV[2], 'sending', 'queued')
  redis.call('XADD', KEYS[3], '*', 'batch', ARGV[2])
  rollup()
  return 'released'
end
if pending == 1 and (state == 'queued' or state == 'retry_wait') then
  redis.call('XADD', KEYS[3], '*', 'batch', ARGV[2])
  return 'requeued'
end
return 'left'
