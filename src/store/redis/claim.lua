#!lua
-- CLAIM: takes an idempotency key for one request (`claim_idempotency`).
-- KEYS[1]  the key's record, rg:{p}:idem:<api key name>:<sha256 of the Idempotency-Key>
-- ARGV[1]  the claim token (new per request)
-- ARGV[2]  how long an in-progress claim lives (ms)
-- ARGV[3]  '1' when writes wait for copies: a completed record is then written once more
-- Answers {'claimed'}, {'in_progress'}, or {'done', <the recorded answer, JSON>}.
--
-- Invariant: one key, one request at a time. Reading the record and writing the claim are one
-- step, so two requests with the same key are never both told 'claimed'. The claim expires if
-- its request dies; only its token completes it (ACCEPT) or gives it back (RELEASE).

local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'state', 'in_progress', 'token', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'claimed'}
end
if state == 'in_progress' then
  return {'in_progress'}
end
if ARGV[3] == '1' then
  -- A write that follows the accept in the replication stream: once the copies have it, they
  -- have the accept (see `claim_idempotency`).
  redis.call('HSET', KEYS[1], 'replayed', '1')
end
return {'done', redis.call('HGET', KEYS[1], 'record')}
