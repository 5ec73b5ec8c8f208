-- round_ok: the end of a CLI round that exited 0, in one call (~20 commands that would otherwise
-- take two round trips). The steps, in order:
--  1. (with a task) finish_task.lua's transition to `completed` unless the task is already
--     terminal (the CLI finished it itself); the assignee's current_task/tasks_completed/heartbeat;
--  2. ack_round.lua, fenced by the agent lease (not ours → nothing acked, reply 0);
--  3. agent_round_end.lua on the worker's agent; 4. agent info last_exit/task, crash count reset;
--  5. the activity line (LPUSH + LTRIM 0 9 + EXPIRE 3600);
--  6. on a transition: task_completed on the town/assignee/mission streams and the notify PUBLISH,
--     from the event JSON the worker built for the assignee and tags it read at the round start.
--     If the task's assigned_to or tags changed meanwhile, no event is written here and the reply
--     says so (the worker then emits them from the returned values);
--  7. Working -> Idle state event on the town and agent streams when the agent was working.
-- KEYS[1] = task hash (any key when ARGV[4] = "")   KEYS[2] = inflight_urgent   KEYS[3] = inflight
-- KEYS[4] = urgent   KEYS[5] = inbox   KEYS[6] = agent lease   KEYS[7] = delayed zset
-- KEYS[8] = agent hash   KEYS[9] = daemon agent info   KEYS[10] = activity list
-- KEYS[11] = town event stream   KEYS[12] = the agent's event stream
-- ARGV[1] = key prefix "tt:<town>:"   ARGV[2] = now (RFC 3339 +00:00)   ARGV[3] = result text
-- ARGV[4] = task id or ""   ARGV[5] = expected assigned_to   ARGV[6] = expected tags (raw field)
-- ARGV[7] = task_completed event data   ARGV[8] = mission id or ""   ARGV[9] = notify channel
-- ARGV[10] = notify JSON   ARGV[11] = Working -> Idle event data   ARGV[12] = activity text
-- ARGV[13] = owner token   ARGV[14..16] = MAXLEN ~ of town, agent, mission streams
-- ARGV[17] = the round's usage, JSON {"n": {count field: int}, "f": {cost_usd: float},
--            "s": {label field: string}} or '' (none): counts and cost are added to the task's
--            daemon meta, the agent's info (KEYS[9]) and, with a mission (ARGV[8]), the mission's
--            daemon meta and the task's batch (add_usage.lua); labels (model, session_id) are
--            set on the task's meta
-- ARGV[18..] = ack groups of 4: list ('u' | 'i'), raw, score ('' = plain ack), envelope
-- Returns {finish code, a, b, events written (1/0), acked (1/0), old agent state or false}:
-- finish code -2 no task, -3 the task key is unreadable (not a hash), -1 no task hash,
-- 0 already terminal (a = its state), 1 completed (a = assigned_to or "", b = tags or "[]").
local prefix, now = ARGV[1], ARGV[2]
local code, fa, fb, evd = -2, '', '', 0
local tid = ARGV[4]
--#include finish_task
if tid ~= '' then
  local st = redis.pcall('TYPE', KEYS[1])
  if st['ok'] ~= 'hash' and st['ok'] ~= 'none' then
    code = -3
  else
    local res = finish_task({KEYS[1]}, {prefix, 'completed', ARGV[3], now, tid})
    code = res[1]
    if code == 0 then
      fa = res[2]
    elseif code == 1 then
      fa, fb = res[2], res[3]
      if fa == ARGV[5] and fb == ARGV[6] then evd = 1 end
    end
  end
end
-- 2. ack
--#include ack_round
local ack_args = {ARGV[13]}
for i = 18, #ARGV do ack_args[#ack_args + 1] = ARGV[i] end
local acked = ack_round({KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]}, ack_args)
-- 3. agent round end
--#include agent_round_end
local ret_old = agent_round_end({KEYS[8]}, {now, tid})
-- usage
--#include add_usage
if ARGV[17] ~= '' then
  local targets = {KEYS[9]}
  if tid ~= '' then targets[#targets + 1] = prefix .. 'tinytownd:task:' .. tid end
  if ARGV[8] ~= '' then targets[#targets + 1] = prefix .. 'tinytownd:mission:' .. ARGV[8] end
  add_usage(targets, {ARGV[17], tid ~= '' and 2 or 0, prefix .. 'tinytownd:'})
end
-- 4., 5.
redis.call('HSET', KEYS[9], 'last_exit', '0', 'task', '')
redis.call('HDEL', KEYS[9], 'crashes')
redis.call('LPUSH', KEYS[10], ARGV[12])
redis.call('LTRIM', KEYS[10], 0, 9)
redis.call('EXPIRE', KEYS[10], 3600)
-- 6.
if evd == 1 then
  redis.call('XADD', prefix .. 'events', 'MAXLEN', '~', ARGV[14], '*', 'event_type',
             'task_completed', 'data', ARGV[7])
  if fa ~= '' then
    redis.call('XADD', prefix .. 'events:agent:' .. fa, 'MAXLEN', '~', ARGV[15], '*',
               'event_type', 'task_completed', 'data', ARGV[7])
  end
  if ARGV[8] ~= '' then
    redis.call('XADD', prefix .. 'events:mission:' .. ARGV[8], 'MAXLEN', '~', ARGV[16], '*',
               'event_type', 'task_completed', 'data', ARGV[7])
  end
  redis.call('PUBLISH', ARGV[9], ARGV[10])
end
-- 7.
if ret_old == 'working' then
  redis.call('XADD', KEYS[11], 'MAXLEN', '~', ARGV[14], '*', 'event_type', 'agent_state_changed',
             'data', ARGV[11])
  redis.call('XADD', KEYS[12], 'MAXLEN', '~', ARGV[14 + 1], '*', 'event_type',
             'agent_state_changed', 'data', ARGV[11])
end
return {code, fa, fb, evd, acked, ret_old}
