#!lua
-- PURGE: deletes a settled report and its batches (`purge_settled`).
-- KEYS[1]  the report
-- KEYS[2]  the partner's reports index
-- KEYS[3]  the branch's reports index
-- KEYS[4]  the period's reports
-- KEYS[5..] every key of its batches (attempts, actions, the batch)
-- ARGV[1]  the report id
-- Answers 1 when deleted, else 0.
--
-- Invariant: only a settled report is deleted: its status (rolled up from every batch) is
-- read in the same step as the deletes, so a batch resent meanwhile keeps its report.

local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'delivered' and status ~= 'delivered_with_problems' then return 0 end
for i = 5, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
