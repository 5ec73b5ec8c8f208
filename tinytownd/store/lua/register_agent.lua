-- register_agent: idempotent registration of an agent by name (one record per name per town).
-- KEYS[1] = tt:<town>:tinytownd:agent_names (hash name → aid)
-- ARGV[1] = key prefix "tt:<town>:"   ARGV[2] = name   ARGV[3] = candidate aid
-- ARGV[4..] = field/value pairs of a new agent hash ("" pairs = adopt the existing hash ARGV[3])
-- If the name maps to an aid whose agent hash exists, return {that aid, 0}: nothing is written.
-- Otherwise map name → candidate and, if the candidate's hash does not exist yet, write it from
-- the pairs; return {candidate, 1 if the hash was created else 2}.
local cur = redis.call('HGET', KEYS[1], ARGV[2])
if cur and redis.call('EXISTS', ARGV[1] .. 'agent:' .. cur) == 1 then return {cur, 0} end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
local akey = ARGV[1] .. 'agent:' .. ARGV[3]
if #ARGV > 3 and redis.call('EXISTS', akey) == 0 then
  local pairs = {}
  for i = 4, #ARGV do pairs[#pairs + 1] = ARGV[i] end
  redis.call('HSET', akey, unpack(pairs))
  return {ARGV[3], 1}
end
return {ARGV[3], 2}
