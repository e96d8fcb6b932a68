#!lua
-- TOUCH: reads a web session and moves its idle expiry on (`session`).
-- KEYS[1]  the session, rg:session:<sha256 of the id>
-- ARGV[1]  now (ms)
-- ARGV[2]  the idle timeout (ms)
-- Answers the session (JSON), or nil when it is gone or past its absolute expiry.
--
-- Invariant: reading a session is also its touch, in one step, never past the absolute
-- expiry, so two processes serving the same session can't resurrect an ended one.

local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_ms'))
if not expires then return false end
local left = expires - tonumber(ARGV[1])
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return false
end
redis.call('PEXPIRE', KEYS[1], math.min(left, tonumber(ARGV[2])))
return redis.call('HGET', KEYS[1], 'doc')
