-- finish_task: move a task to a terminal state once (tt's `task complete` semantics, atomically).
-- KEYS[1] = tt:<town>:task:<tid>
-- ARGV[1] = key prefix "tt:<town>:"   ARGV[2] = new state (completed|failed|cancelled)
-- ARGV[3] = result text                ARGV[4] = now (RFC 3339 +00:00)   ARGV[5] = tid
-- Returns {-1} when the task hash does not exist, {0, state} when it was already terminal,
-- else {1, assigned_to or "", tags or "[]"}.
-- Single-field writes only: HSET state/result/completed_at/updated_at; on the assignee's agent hash
-- HDEL current_task if it names this task, HINCRBY tasks_completed 1 (completed only) and HSET
-- last_heartbeat, as `tt task complete` does.
--#include counter
local st = redis.call('HGET', KEYS[1], 'state')
if not st then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
  st = 'pending'
end
if st == 'completed' or st == 'failed' or st == 'cancelled' then return {0, st} end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'result', ARGV[3], 'completed_at', ARGV[4],
           'updated_at', ARGV[4])
local aid = redis.call('HGET', KEYS[1], 'assigned_to')
if aid then
  local akey = ARGV[1] .. 'agent:' .. aid
  if redis.call('EXISTS', akey) == 1 then
    if redis.call('HGET', akey, 'current_task') == ARGV[5] then
      redis.call('HDEL', akey, 'current_task')
    end
    if ARGV[2] == 'completed' then counter({akey}, {'tasks_completed', 1}) end
    redis.call('HSET', akey, 'last_heartbeat', ARGV[4])
  end
end
local tags = redis.call('HGET', KEYS[1], 'tags') or '[]'
return {1, aid or '', tags}
