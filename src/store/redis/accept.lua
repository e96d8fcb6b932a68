#!lua
-- ACCEPT: stores a report, its batches and their queue entries, and completes the idempotency
-- record (`accept`). n is the number of batches.
-- KEYS[1]        the idempotency record (for a request without a key, an unused key in the
--                partner's slot, so the script stays cluster-safe)
-- KEYS[2]        the report, rg:{p}:report:<id>
-- KEYS[3]        the partner's reports index, rg:{p}:reports
-- KEYS[4]        the branch's reports index, rg:{p}:reports:branch:<branch>
-- KEYS[5]        the delivery stream, rg:{p}:deliveries
-- KEYS[6]        the period's loans, rg:{p}:period:<period>:loans (loan key -> report id)
-- KEYS[7]        the period's reports, rg:{p}:period:<period>:reports
-- KEYS[8]        the periods with reports, rg:{p}:periods
-- KEYS[9]        the queued batches of the state index, rg:{p}:batches:queued
-- KEYS[10]       the state index's marker, rg:{p}:batches:indexed
-- KEYS[11..10+n] one per batch, rg:{p}:batch:<id>.<number>
-- KEYS[#KEYS]    the period's report branches, rg:{p}:period:<period>:branches (id -> branch)
-- ARGV[1]        '1' when the request has an idempotency key, else '0'
-- ARGV[2]        the claim token
-- ARGV[3]        how long the completed record is kept (s)
-- ARGV[4]        the recorded answer (JSON)
-- ARGV[5]        the report id
-- ARGV[6]        the report (JSON)
-- ARGV[7]        when the report was created (ms): its batches' `queued_at`
-- ARGV[8]        correction: '0' none, '1' of any branch's loans, '2' of the report's own
--                branch's loans only
-- ARGV[9]        how long the period's indexes live (s)
-- ARGV[10]       the period
-- ARGV[11..10+n] the batches (JSON)
-- ARGV[11+n..10+2n] the batch ids
-- ARGV[11+2n..]  the report's loan keys, in order (see `loan_key`)
-- Answers {'ok'}; or writes nothing and answers {'reported', 'position=report', ...} (loans
-- another report of the period has), {'foreign', position, ...} (a branch's correction of
-- another branch's loans), or the error CLAIMLOST (the idempotency claim is gone).
--
-- Invariants: all or nothing, and one loan, one report per period. Every check (the claim
-- still ours, the period's loans free or the correction allowed) comes before the first
-- write, and the script is one step: no other accept runs between the check and the writes,
-- whichever process sends it, so two reports with the same loan can never both be accepted.
-- `#!lua` makes an out-of-memory Redis refuse the script whole rather than fail half-way
-- (scripts are not rolled back). The period's loans hold the report id alone because it is
-- the one argument every field shares: building `report:position` for each loan in Lua was a
-- fifth of a 200-loan accept's Redis time (indexes written before hold `report:position`;
-- `accept` reads both and finds where the earlier report has the loan).

local batches = #KEYS - 11
local first_loan = 11 + 2 * batches
local branches = KEYS[#KEYS]
-- Report ids are never reused, so an existing report means this very accept ran already: a
-- client that resends a command after a dropped connection (the cluster client does) gets the
-- answer the first run gave.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'ok'}
end
if ARGV[1] == '1' then
  if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2]
     or redis.call('HGET', KEYS[1], 'state') ~= 'in_progress' then
    return redis.error_reply('CLAIMLOST the idempotency claim is gone')
  end
end
if ARGV[8] == '2' then
  -- A branch corrects only loans its own branch reported: the branch of the report the index
  -- names now. One the branches hash does not know (indexed before it existed) is refused
  -- too; an admin key can correct it.
  local mine = cjson.decode(ARGV[6]).branch
  local known, foreign = {}, {}
  for i = first_loan, #ARGV, 1000 do
    local last = math.min(i + 999, #ARGV)
    local found = redis.call('HMGET', KEYS[6], unpack(ARGV, i, last))
    for j = 1, #found do
      local report = found[j]
      if report then
        if known[report] == nil then
          known[report] = redis.call('HGET', branches, report) or false
        end
        if known[report] ~= mine then
          table.insert(foreign, tostring(i + j - 1 - first_loan))
        end
      end
    end
  end
  if #foreign > 0 then
    table.insert(foreign, 1, 'foreign')
    return foreign
  end
elseif ARGV[8] ~= '1' then
  local earlier = {}
  -- In chunks: Lua's unpack has a limit on how many values it passes.
  for i = first_loan, #ARGV, 1000 do
    local last = math.min(i + 999, #ARGV)
    local found = redis.call('HMGET', KEYS[6], unpack(ARGV, i, last))
    for j = 1, #found do
      if found[j] then
        table.insert(earlier, tostring(i + j - 1 - first_loan) .. '=' .. found[j])
      end
    end
  end
  if #earlier > 0 then
    table.insert(earlier, 1, 'reported')
    return earlier
  end
end
redis.call('HSET', KEYS[2], 'doc', ARGV[6], 'status', 'queued')
redis.call('ZADD', KEYS[3], 0, ARGV[5])
-- The partner's first report: the state index is complete from here (see `summary`), so no
-- scrape ever walks the partner's reports to build it.
if redis.call('ZCARD', KEYS[3]) == 1 then redis.call('SET', KEYS[10], '1') end
redis.call('ZADD', KEYS[4], 0, ARGV[5])
redis.call('ZADD', KEYS[7], 0, ARGV[5])
redis.call('ZADD', KEYS[8], 0, ARGV[10])
for i = 1, batches do
  redis.call('HSET', KEYS[10 + i], 'doc', ARGV[10 + i], 'state', 'queued', 'attempt', 0,
             'queued_at', ARGV[7])
  redis.call('ZADD', KEYS[9], ARGV[7], ARGV[10 + batches + i])
  redis.call('XADD', KEYS[5], '*', 'batch', ARGV[10 + batches + i])
end
-- One HSET per chunk, not per loan: a call from Lua costs more than a field.
for i = first_loan, #ARGV, 500 do
  local fields = {}
  for j = i, math.min(i + 499, #ARGV) do
    fields[#fields + 1] = ARGV[j]
    fields[#fields + 1] = ARGV[5]
  end
  redis.call('HSET', KEYS[6], unpack(fields))
end
redis.call('HSET', branches, ARGV[5], cjson.decode(ARGV[6]).branch)
-- The period's loans are needed while its reports are; a new report extends that.
redis.call('EXPIRE', KEYS[6], ARGV[9])
redis.call('EXPIRE', branches, ARGV[9])
redis.call('EXPIRE', KEYS[7], ARGV[9])
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'state', 'done', 'record', ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return {'ok'}
