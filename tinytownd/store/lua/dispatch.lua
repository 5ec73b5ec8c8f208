-- dispatch: the embedded batch dispatcher's hand-out pass (batch/dispatch.py) in one call: for each
-- pick, `LREM backlog 1 tid` is the arbitration point (as in claim_backlog.lua: a task someone else
-- took meanwhile is not handed out), then the task → assigned (state, assigned_to, updated_at),
-- the task_assign message exactly as `tt assign` sends it RPUSHed to the agent's inbox and, when
-- given, the task_assigned event on the town, agent and mission streams.
-- KEYS[1] = tt:<town>:backlog
-- ARGV[1] = key prefix "tt:<town>:"   ARGV[2] = now (RFC 3339 +00:00)
-- ARGV[3..5] = MAXLEN ~ of the town, agent and mission streams
-- ARGV[6..] = picks, groups of 5: tid, aid, task_assign message, event data or "", mission or ""
-- A write that fails (a key of the wrong type) puts the task back at the backlog head first, so
-- nothing is lost; the error is returned.
-- Returns, per pick, 1 (handed out) or 0 (no longer in the backlog).
local prefix, now = ARGV[1], ARGV[2]
local out = {}
for i = 6, #ARGV, 5 do
  local tid, aid, msg, ev, mid = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if redis.call('LREM', KEYS[1], 1, tid) == 1 then
    local r = redis.pcall('HSET', prefix .. 'task:' .. tid, 'state', 'assigned', 'assigned_to', aid,
                          'updated_at', now)
    if type(r) == 'table' and r['err'] then redis.call('LPUSH', KEYS[1], tid) return r end
    r = redis.pcall('RPUSH', prefix .. 'inbox:' .. aid, msg)
    if type(r) == 'table' and r['err'] then redis.call('LPUSH', KEYS[1], tid) return r end
    if ev ~= '' then
      redis.call('XADD', prefix .. 'events', 'MAXLEN', '~', ARGV[3], '*', 'event_type',
                 'task_assigned', 'data', ev)
      redis.call('XADD', prefix .. 'events:agent:' .. aid, 'MAXLEN', '~', ARGV[4], '*',
                 'event_type', 'task_assigned', 'data', ev)
      if mid ~= '' then
        redis.call('XADD', prefix .. 'events:mission:' .. mid, 'MAXLEN', '~', ARGV[5], '*',
                   'event_type', 'task_assigned', 'data', ev)
      end
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
