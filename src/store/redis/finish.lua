-- FINISH: records how an attempt ended and settles its queue entry (`finish_attempt`).
-- KEYS     the delivery layout (see rollup.lua)
-- ARGV[1]  the queue entry id
-- ARGV[2]  the attempt number
-- ARGV[3]  the new state
-- ARGV[4]  the result (JSON)
-- ARGV[5]  the attempt record (JSON)
-- ARGV[6]  when to retry (ms), or ''
-- ARGV[7]  the batch id
-- ARGV[8]  how many of the batch's loans Kiva refused
-- ARGV[9]  how a take-over's stand-in attempt record begins (`UNRECORDED`)
-- Answers 'OK', 'duplicate' or 'stale'.
--
-- Invariants: idempotent per attempt (`recorded:<n>` is set with HSETNX in the same step as
-- the record, so a repeat after a lost answer writes nothing twice), and fenced: the state is
-- written only while the batch is `sending` under this very entry, so a late answer can't
-- overwrite an operator's decision or a take-over; the attempt's record is kept either way.

settle(ARGV[1])
if redis.call('HSETNX', KEYS[1], 'recorded:' .. ARGV[2], 1) == 0 then
  -- A repeat of a FINISH whose answer was lost: all of it is written already.
  return 'duplicate'
end
-- The attempt happened (Kiva may have been called), so its record is kept even when stale;
-- it replaces the stand-in a take-over wrote for it (see `Attempt::unrecorded`).
local replaced = false
for i, doc in ipairs(redis.call('LRANGE', KEYS[5], 0, -1)) do
  if string.find(doc, ARGV[9], 1, true) then
    local ok, record = pcall(cjson.decode, doc)
    if ok and tostring(record.number) == ARGV[2] then
      redis.call('LSET', KEYS[5], i - 1, ARGV[5])
      replaced = true
      break
    end
  end
end
if not replaced then redis.call('RPUSH', KEYS[5], ARGV[5]) end
if redis.call('HGET', KEYS[1], 'state') ~= 'sending'
   or redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then
  -- Taken over and held, or decided by an operator, while this attempt was out: the newer
  -- decision stands.
  return 'stale'
end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'result', ARGV[4])
redis.call('HDEL', KEYS[1], 'fence')
move(ARGV[7], 'sending', ARGV[3])
if ARGV[3] == 'delivered' and tonumber(ARGV[8]) > 0 then
  redis.call('HINCRBY', KEYS[2], 'refused', ARGV[8])
end
if ARGV[3] == 'retry_wait' then
  redis.call('HSET', KEYS[1], 'next_attempt_at', ARGV[6])
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[7])
end
rollup()
return 'OK'
