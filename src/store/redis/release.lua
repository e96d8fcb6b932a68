#!lua
-- RELEASE: gives an idempotency key back when its request failed before the accept
-- (`release_idempotency`).
-- KEYS[1]  the key's record
-- ARGV[1]  the claim token
-- Answers 'OK'.
--
-- Invariant: only a claim still in progress under this very token is deleted, in one step
-- with the check: a claim that expired and was taken by another request, or a completed
-- record, is left as it is.

if redis.call('HGET', KEYS[1], 'state') == 'in_progress'
   and redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 'OK'
