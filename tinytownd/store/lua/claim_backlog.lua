-- claim_backlog: an idle agent claims one backlog task that fits it. The agent is known (resolved)
-- BEFORE the claim; `LREM backlog 1 tid` is the arbitration point, so no task is claimed twice.
-- KEYS[1] = tt:<town>:backlog
-- ARGV[1] = key prefix "tt:<town>:"   ARGV[2] = aid   ARGV[3] = now (RFC 3339 +00:00)
-- ARGV[4], ARGV[5] = the task_assign message before and after its task id (records.task_assign_parts)
-- ARGV[6] = how many backlog entries to look at
-- ARGV[7] = now (RFC 3339 Z, for dead letters)   ARGV[8] = dead-letter entries kept
-- ARGV[9..] = the agent's words (store/fit.py agent_words: role, "role:<role>", name, agent tags)
-- The tag rule of store/fit.py task_fits: a task fits when it has no tags, or one of its tags is
-- one of the words (tags that are not a JSON list count as none).
-- Entries that cannot be a task go to the dead-letter list (and leave the backlog), so they never
-- hold up the tasks behind them: an id without a task hash, an id whose task key is not a hash,
-- an entry that is not a task id (UUID). Entries of tasks already finished are dropped (nothing to do).
-- KEYS[2] = the dead-letter list   ARGV[6] also bounds the ids looked at per call
-- On a claim: task → assigned (state, assigned_to, updated_at), daemon task meta agent = aid, and the
-- task_assign message exactly as `tt backlog claim` sends it is RPUSHed to the agent's inbox.
-- Returns {task id or false, entries dead-lettered, finished entries dropped}.
--#include deadletter
-- an agent that is stopping or not taking work gets nothing (the task would wait in its inbox)
if redis.call('EXISTS', ARGV[1] .. 'stop:' .. ARGV[2]) == 1 then return {false, 0, 0} end
local ast = redis.pcall('HGET', ARGV[1] .. 'agent:' .. ARGV[2], 'state')
if ast == 'paused' or ast == 'stopped' or ast == 'draining' then return {false, 0, 0} end
local words = {}
for i = 9, #ARGV do words[ARGV[i]] = true end
local ids = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[6]) - 1)
local dead, dropped = 0, 0
local UUID = '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$'
local function bury(tid, reason)
  redis.call('LREM', KEYS[1], 1, tid)
  deadletter({KEYS[2]}, {reason, KEYS[1], tid, ARGV[7], ARGV[8], '65536'})
  dead = dead + 1
end
for _, tid in ipairs(ids) do
  local tkey = ARGV[1] .. 'task:' .. tid
  local h = string.match(tid, UUID) and redis.pcall('HMGET', tkey, 'id', 'state', 'tags') or nil
  if h == nil then
    bury(tid, 'backlog entry is not a task id (UUID)')
  elseif h['err'] then
    bury(tid, 'task key is not a hash')
  elseif not h[1] then
    bury(tid, 'no such task')
  else
    local st = h[2]
    if st == 'completed' or st == 'failed' or st == 'cancelled' then
      redis.call('LREM', KEYS[1], 1, tid)
      dropped = dropped + 1
    else
      local ok, tags = pcall(cjson.decode, h[3] or '[]')
      local fits = false
      if not ok or type(tags) ~= 'table' or #tags == 0 then
        fits = true
      else
        for _, t in ipairs(tags) do
          if words[t] then fits = true end
        end
      end
      if fits then
        -- every key written below must take the write, or the LREM would lose the task
        for _, key in ipairs({ARGV[1] .. 'inbox:' .. ARGV[2], ARGV[1] .. 'tinytownd:task:' .. tid}) do
          local kt = redis.call('TYPE', key)['ok']
          if kt ~= 'none' and kt ~= (string.find(key, ':inbox:', 1, true) and 'list' or 'hash') then
            return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. kt)
          end
        end
      end
      if fits and redis.call('LREM', KEYS[1], 1, tid) == 1 then
        redis.call('HSET', tkey, 'state', 'assigned', 'assigned_to', ARGV[2], 'updated_at', ARGV[3])
        redis.call('HSET', ARGV[1] .. 'tinytownd:task:' .. tid, 'agent', ARGV[2])
        redis.call('RPUSH', ARGV[1] .. 'inbox:' .. ARGV[2], ARGV[4] .. cjson.encode(tid) .. ARGV[5])
        return {tid, dead, dropped}
      end
    end
  end
end
return {false, dead, dropped}
