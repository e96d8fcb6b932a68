#!lua
-- PROMOTE: queues again the retries that are due (`promote_due_retries`).
-- KEYS[1]  the retry set, rg:{p}:retries (batch ids scored by when they are due)
-- KEYS[2]  the delivery stream
-- ARGV[1]  now (ms)
-- ARGV[2]  at most this many
-- Answers how many were queued.
--
-- Invariant: a due batch leaves the retry set and enters the stream in one step, so it is
-- never in both, nor lost between them.

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, batch in ipairs(due) do
  redis.call('ZREM', KEYS[1], batch)
  redis.call('XADD', KEYS[2], '*', 'batch', batch)
end
return #due
