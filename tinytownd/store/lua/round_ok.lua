-- round_ok: the end of a CLI round that exited 0, in one call. The steps, in order:
--  1. (with a task) finish_task.lua's transition to `completed` unless the task is already
--     terminal (the CLI finished it itself), read with one HMGET; the assignee's current_task /
--     tasks_completed / heartbeat (when the assignee is this agent, in the write of step 3);
--  2. ack_round.lua, fenced by the agent lease (not ours → nothing acked, reply 0);
--  3. agent_round_end.lua's bookkeeping on the worker's agent, read with one HMGET and written
--     with one HSET (counters computed here; junk counts as 0, as counter.lua does);
--  4. the round's usage (add_usage.lua); agent info last_exit 0 + task "" when asked (the last exit recorded differs, or the round
--     start wrote task), crashes HDEL'd when asked;
--  5. the activity line (LPUSH + LTRIM 0 9, + EXPIRE 3600 when ARGV[20] = "1": the worker
--     refreshes the expiry at most once a minute, so the list still expires an hour (less at
--     most that minute) after the agent's last activity);
--  6. on a transition: the notify PUBLISH and, when ARGV[7] is not "", task_completed on the
--     town/assignee/mission streams, from the event JSON the worker built for the assignee and
--     tags it read at the round start. If the task's assigned_to or tags changed meanwhile,
--     nothing is written here and the reply says so (the worker then writes them itself);
--  7. when ARGV[11] is not "", the Working -> Idle state event on the town and agent streams
--     (when the agent was working).
-- Run as the first part of round_ok_take (`...` = the `fused` table, scripts.py COMPOSITES), the
-- agent hash write of step 3 is left in fused.agent / fused.hdel for the composite to send after
-- the next take (which may add the next round's start to it), and fused.acked / fused.state tell
-- the take that the lease is ours, the in-flight lists are empty and what the agent's state is.
-- KEYS[1] = task hash (any key when ARGV[4] = "")   KEYS[2] = inflight_urgent   KEYS[3] = inflight
-- KEYS[4] = urgent   KEYS[5] = inbox   KEYS[6] = agent lease   KEYS[7] = delayed zset
-- KEYS[8] = agent hash   KEYS[9] = daemon agent info   KEYS[10] = activity list
-- KEYS[11] = town event stream   KEYS[12] = the agent's event stream
-- ARGV[1] = key prefix "tt:<town>:"   ARGV[2] = now (RFC 3339 +00:00)   ARGV[3] = result text
-- ARGV[4] = task id or ""   ARGV[5] = expected assigned_to   ARGV[6] = expected tags (raw field)
-- ARGV[7] = task_completed event data or ""   ARGV[8] = mission id or ""   ARGV[9] = notify channel
-- ARGV[10] = notify JSON   ARGV[11] = Working -> Idle event data or ""   ARGV[12] = activity text
-- ARGV[13] = owner token   ARGV[14..16] = MAXLEN ~ of town, agent, mission streams
-- ARGV[17] = the round's usage, JSON {"n": {count field: int}, "f": {cost_usd: float},
--            "s": {label field: string}} or '' (none): counts and cost are added to the task's
--            daemon meta, the agent's info (KEYS[9]) and, with a mission (ARGV[8]), the mission's
--            daemon meta and the task's batch (add_usage.lua); labels (model, session_id) are
--            set on the task's meta
-- ARGV[18] = "1" to write agent info last_exit/task   ARGV[19] = "1" to HDEL agent info crashes
-- ARGV[20] = "1" to refresh the activity list's expiry
-- ARGV[21..] = ack groups of 4: list ('u' | 'i' | 'U'), raw, score ('' = plain ack), envelope
-- Returns {finish code, a, b, no event fallback needed (1/0), acked (1/0), old agent state or
-- false}: finish code -2 no task, -3 the task key is unreadable (not a hash), -1 no task hash,
-- 0 already terminal (a = its state), 1 completed (a = assigned_to or "", b = tags or "[]").
local fused = ...
local prefix, now = ARGV[1], ARGV[2]
local code, fa, fb, evd = -2, '', '', 0
local tid = ARGV[4]
local TERMINAL = {completed = true, failed = true, cancelled = true}
local self_assignee = false
--#include counter
-- an integer field as HINCRBY reads it; junk counts as 0 (see counter.lua)
local function int(v)
  if v and string.match(v, '^%-?%d+$') and #v <= 18 then return tonumber(v) end
  return 0
end
-- 1.
if tid ~= '' then
  local h = redis.pcall('HMGET', KEYS[1], 'id', 'state', 'assigned_to', 'tags')
  if h['err'] then
    code = -3
  elseif not (h[1] or h[2] or h[3] or h[4]) and redis.call('EXISTS', KEYS[1]) == 0 then
    code = -1
  elseif TERMINAL[h[2] or 'pending'] then
    code, fa = 0, h[2]
  else
    redis.call('HSET', KEYS[1], 'state', 'completed', 'result', ARGV[3], 'completed_at', now,
               'updated_at', now)
    code, fa, fb = 1, h[3] or '', h[4] or '[]'
    if fa == ARGV[5] and fb == ARGV[6] then evd = 1 end
    local akey = prefix .. 'agent:' .. fa
    if akey == KEYS[8] then
      self_assignee = true
    elseif h[3] and redis.call('EXISTS', akey) == 1 then
      if redis.call('HGET', akey, 'current_task') == tid then
        redis.call('HDEL', akey, 'current_task')
      end
      counter({akey}, {'tasks_completed', 1})
      redis.call('HSET', akey, 'last_heartbeat', now)
    end
  end
end
-- 2. ack
--#include ack_round
local ack_args = {ARGV[13]}
for i = 21, #ARGV do ack_args[#ack_args + 1] = ARGV[i] end
local acked = ack_round({KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]}, ack_args)
-- 3. agent round end
local ag = redis.call('HMGET', KEYS[8], 'state', 'current_task', 'rounds_completed',
                      'tasks_completed', 'id')
local ret_old = false
if (ag[1] or ag[2] or ag[3] or ag[4] or ag[5]) or redis.call('EXISTS', KEYS[8]) == 1 then
  local st = ag[1]
  ret_old = st or 'starting'
  local fields = {'rounds_completed', tostring(int(ag[3]) + 1), 'last_heartbeat', now}
  local state = st
  if st == 'working' or st == 'idle' or st == 'starting' or not st then
    state = 'idle'
    for _, x in ipairs({'state', 'idle', 'last_active_at', now}) do fields[#fields + 1] = x end
  end
  if self_assignee then
    fields[#fields + 1] = 'tasks_completed'
    fields[#fields + 1] = tostring(int(ag[4]) + 1)
  end
  local hdel = tid ~= '' and ag[2] == tid
  if fused then
    fused.key, fused.agent, fused.hdel, fused.state = KEYS[8], fields, hdel, state
  else
    redis.call('HSET', KEYS[8], unpack(fields))
    if hdel then redis.call('HDEL', KEYS[8], 'current_task') end
  end
end
if fused then fused.acked = acked == 1 end
-- usage
--#include add_usage
if ARGV[17] ~= '' then
  local targets = {KEYS[9]}
  if tid ~= '' then targets[#targets + 1] = prefix .. 'tinytownd:task:' .. tid end
  if ARGV[8] ~= '' then targets[#targets + 1] = prefix .. 'tinytownd:mission:' .. ARGV[8] end
  add_usage(targets, {ARGV[17], tid ~= '' and 2 or 0, prefix .. 'tinytownd:'})
end
-- 4., 5.
if ARGV[18] == '1' then redis.call('HSET', KEYS[9], 'last_exit', '0', 'task', '') end
if ARGV[19] == '1' then redis.call('HDEL', KEYS[9], 'crashes') end
redis.call('LPUSH', KEYS[10], ARGV[12])
redis.call('LTRIM', KEYS[10], 0, 9)
if ARGV[20] == '1' then redis.call('EXPIRE', KEYS[10], 3600) end
-- 6.
if evd == 1 then
  if ARGV[7] ~= '' then
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
  end
  redis.call('PUBLISH', ARGV[9], ARGV[10])
end
-- 7.
if ret_old == 'working' and ARGV[11] ~= '' then
  redis.call('XADD', KEYS[11], 'MAXLEN', '~', ARGV[14], '*', 'event_type', 'agent_state_changed',
             'data', ARGV[11])
  redis.call('XADD', KEYS[12], 'MAXLEN', '~', ARGV[14 + 1], '*', 'event_type',
             'agent_state_changed', 'data', ARGV[11])
end
return {code, fa, fb, evd, acked, ret_old}
