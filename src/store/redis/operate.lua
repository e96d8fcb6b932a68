-- OPERATE: an operator's resend or mark-delivered (`operate_batch`).
-- KEYS     the delivery layout (see rollup.lua)
-- ARGV[1]  the action, 'resend' or 'mark_delivered'
-- ARGV[2]  the action record without `from_state` (JSON)
-- ARGV[3]  now (ms)
-- ARGV[4]  the result to record (mark_delivered; JSON)
-- ARGV[5]  the states allowed to start from, e.g. ',held,failed,'
-- ARGV[6]  the batch id
-- ARGV[7]  the version the operator confirmed against (`BatchVersion`'s text), or ''
-- Answers {'done', state}, {'conflict', state}, {'changed', version} or {'missing'}.
--
-- Invariant: the action applies to the batch as the operator saw it. The state and version
-- are read, checked and changed in one step, and the fence is cleared, so an attempt still
-- out can't overwrite the decision when its answer comes.

local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if ARGV[7] ~= '' then
  local version = state .. '.' .. redis.call('LLEN', KEYS[5]) .. '.' .. redis.call('LLEN', KEYS[6])
  if version ~= ARGV[7] then return {'changed', version} end
end
if not string.find(ARGV[5], ',' .. state .. ',', 1, true) then return {'conflict', state} end
-- ARGV[2] is a JSON object made by Rust; the state found is spliced in as its last member.
redis.call('RPUSH', KEYS[6], string.sub(ARGV[2], 1, -2) .. ',"from_state":"' .. state .. '"}')
redis.call('HDEL', KEYS[1], 'fence')
if ARGV[1] == 'resend' then
  -- A fresh retry budget: attempts are counted again from here (the history is kept).
  local attempt = redis.call('HGET', KEYS[1], 'attempt') or '0'
  redis.call('HSET', KEYS[1], 'state', 'queued', 'queued_at', ARGV[3], 'budget_from', attempt)
  redis.call('HDEL', KEYS[1], 'next_attempt_at', 'result')
  move(ARGV[6], state, 'queued', ARGV[3])
  redis.call('ZREM', KEYS[4], ARGV[6])
  redis.call('XADD', KEYS[3], '*', 'batch', ARGV[6])
else
  redis.call('HSET', KEYS[1], 'state', 'delivered', 'result', ARGV[4])
  move(ARGV[6], state, 'delivered')
end
rollup()
return {'done', state}
