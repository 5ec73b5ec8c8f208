-- round_start: the start of a CLI round in one call (six writes, one round trip), for a round
-- take_round.lua did not start itself (a `task` message, a round without a task).
-- KEYS[1] = agent hash   KEYS[2] = daemon agent info   KEYS[3] = task hash (the round's task)
-- KEYS[4] = daemon task meta (attempts)   KEYS[5] = town event stream   KEYS[6] = agent event stream
-- ARGV[1] = now (RFC 3339 +00:00)   ARGV[2] = task id or "" (no task hash to touch)
-- ARGV[3] = "1" to count an attempt in KEYS[4]   ARGV[4] = round number
-- ARGV[5] = agent_state_changed event data (JSON TownEvent, built by the worker) or ""
-- ARGV[6] = town stream MAXLEN ~   ARGV[7] = agent stream MAXLEN ~
-- Single-field writes, in this order: agent state working + last_active_at + last_heartbeat
-- (+ current_task); task running + started_at + updated_at; attempts += 1; agent info round,
-- round_started_at, task; the state event on the town and agent streams.
-- Returns the attempt number (1 when no attempt is counted).
local now, tid = ARGV[1], ARGV[2]
if tid ~= '' then
  redis.call('HSET', KEYS[1], 'state', 'working', 'last_active_at', now, 'last_heartbeat', now,
             'current_task', tid)
  redis.call('HSET', KEYS[3], 'state', 'running', 'started_at', now, 'updated_at', now)
else
  redis.call('HSET', KEYS[1], 'state', 'working', 'last_active_at', now, 'last_heartbeat', now)
end
--#include counter
local attempt = 1
if ARGV[3] == '1' then attempt = counter({KEYS[4]}, {'attempts', 1}) end
redis.call('HSET', KEYS[2], 'round', ARGV[4], 'round_started_at', now, 'task', tid)
if ARGV[5] ~= '' then   -- "" = no per-task events (config runtime.task_events)
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', 'event_type', 'agent_state_changed',
             'data', ARGV[5])
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'event_type', 'agent_state_changed',
             'data', ARGV[5])
end
return attempt
