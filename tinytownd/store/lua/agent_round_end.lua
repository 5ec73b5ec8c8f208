-- agent_round_end: bookkeeping at the end of a CLI round, without overwriting operator states.
-- KEYS[1] = agent hash
-- ARGV[1] = now (RFC 3339 +00:00)   ARGV[2] = the round's task id or ""
-- rounds_completed += 1; state working → idle (paused/draining/stopped set meanwhile are kept);
-- last_active_at/last_heartbeat = now; current_task HDEL'd if it names the round's task.
-- Returns the state before the change.
--#include counter
local st = redis.call('HGET', KEYS[1], 'state')
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
counter({KEYS[1]}, {'rounds_completed', 1})
if st == 'working' or st == 'idle' or st == 'starting' or not st then
  redis.call('HSET', KEYS[1], 'state', 'idle', 'last_active_at', ARGV[1], 'last_heartbeat', ARGV[1])
else
  redis.call('HSET', KEYS[1], 'last_heartbeat', ARGV[1])
end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'current_task') == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'current_task')
end
return st or 'starting'
