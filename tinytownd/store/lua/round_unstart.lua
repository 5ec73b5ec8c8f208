-- round_unstart: take back the round start take_round.lua made, when the worker does not run that
-- round after all (the message is poison by the daemon's stricter reading, another task comes
-- first, the daemon stops before the round). Each write is undone only if still take_round's:
-- the task goes back to its state before (and started_at) if it is still `running`, attempts
-- -= 1, and the agent back to idle without current_task if it still names the task.
-- KEYS[1] = task hash   KEYS[2] = daemon task meta   KEYS[3] = agent hash
-- ARGV[1] = task id   ARGV[2] = the task's state before ("" = none)
-- ARGV[3] = its started_at before ("" = none)   ARGV[4] = now (RFC 3339 +00:00)
--#include counter
local ok, st = pcall(redis.call, 'HGET', KEYS[1], 'state')
if ok and st == 'running' then
  if ARGV[2] ~= '' then
    redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated_at', ARGV[4])
  else
    redis.call('HDEL', KEYS[1], 'state')
  end
  if ARGV[3] ~= '' then
    redis.call('HSET', KEYS[1], 'started_at', ARGV[3])
  else
    redis.call('HDEL', KEYS[1], 'started_at')
  end
end
if redis.call('TYPE', KEYS[2])['ok'] == 'hash' then counter({KEYS[2]}, {'attempts', -1}) end
local ok2, cur = pcall(redis.call, 'HGET', KEYS[3], 'current_task')
if ok2 and cur == ARGV[1] then
  redis.call('HDEL', KEYS[3], 'current_task')
  if redis.call('HGET', KEYS[3], 'state') == 'working' then
    redis.call('HSET', KEYS[3], 'state', 'idle', 'last_active_at', ARGV[4])
  end
end
return 1
