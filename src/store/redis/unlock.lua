#!lua
-- UNLOCK: gives the refresh lock back (`unlock_refresh`).
-- KEYS[1]  the lock, rg:{p}:refresh:lock
-- ARGV[1]  the holder
-- Answers 1 when given back, else 0.
--
-- Invariant: only the holder may give the lock back (compared and deleted in one step): a
-- refresh that overran its TTL must not free a lock another process has taken since.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
