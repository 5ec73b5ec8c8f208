-- cancel_task: cancel a task once, with single-field writes as tt's Task::cancel (usable inside MULTI).
-- KEYS[1] = tt:<town>:task:<tid>
-- ARGV[1] = reason (the result)   ARGV[2] = now (RFC 3339 +00:00)   ARGV[3] = key prefix "tt:<town>:"
-- ARGV[4] = tid
-- Returns 1 when cancelled, 0 when the task does not exist or is already terminal; the
-- assignee's current_task is cleared when it names this task.
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 0 end
if st == 'completed' or st == 'failed' or st == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'result', ARGV[1], 'completed_at', ARGV[2],
           'updated_at', ARGV[2])
local aid = redis.call('HGET', KEYS[1], 'assigned_to')
if aid then
  local akey = ARGV[3] .. 'agent:' .. aid
  if redis.call('HGET', akey, 'current_task') == ARGV[4] then redis.call('HDEL', akey, 'current_task') end
end
return 1
