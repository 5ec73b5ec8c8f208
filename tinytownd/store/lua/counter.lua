-- counter: HINCRBY that survives a field somebody filled with junk ("abc", "1e999"): the junk
-- counts as 0, so the counter restarts at the increment instead of failing the whole script for
-- ever. (--#include counter; also run on its own.)
-- KEYS[1] = the hash   ARGV[1] = the field   ARGV[2] = the increment
-- Returns the new value.
local n = redis.pcall('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if type(n) == 'table' and n['err'] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return tonumber(ARGV[2])
end
return n
