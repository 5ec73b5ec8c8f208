-- claim_backlog: an idle agent claims one backlog task that fits it. The agent is known (resolved)
-- BEFORE the claim; `LREM backlog 1 tid` is the arbitration point, so no task is claimed twice.
-- KEYS[1] = tt:<town>:backlog
-- ARGV[1] = key prefix "tt:<town>:"   ARGV[2] = aid   ARGV[3] = now (RFC 3339 +00:00)
-- ARGV[4], ARGV[5] = the task_assign message before and after its task id (records.task_assign_parts)
-- ARGV[6] = how many backlog entries to look at
-- ARGV[7..] = the agent's words (store/fit.py agent_words: role, "role:<role>", name, agent tags)
-- The tag rule of store/fit.py task_fits: a task fits when it has no tags, or one of its tags is
-- one of the words (tags that are not a JSON list count as none). Ids without a task hash and
-- terminal tasks are skipped (left in place, as tt leaves them).
-- On a claim: task → assigned (state, assigned_to, updated_at), daemon task meta agent = aid, and the
-- task_assign message exactly as `tt backlog claim` sends it is RPUSHed to the agent's inbox.
-- Returns the task id, or false.
local words = {}
for i = 7, #ARGV do words[ARGV[i]] = true end
local ids = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[6]) - 1)
for _, tid in ipairs(ids) do
  local tkey = ARGV[1] .. 'task:' .. tid
  local h = redis.call('HMGET', tkey, 'id', 'state', 'tags')
  local st = h[2]
  if h[1] and st ~= 'completed' and st ~= 'failed' and st ~= 'cancelled' then
    local ok, tags = pcall(cjson.decode, h[3] or '[]')
    local fits = false
    if not ok or type(tags) ~= 'table' or #tags == 0 then
      fits = true
    else
      for _, t in ipairs(tags) do
        if words[t] then fits = true end
      end
    end
    if fits and redis.call('LREM', KEYS[1], 1, tid) == 1 then
      redis.call('HSET', tkey, 'state', 'assigned', 'assigned_to', ARGV[2], 'updated_at', ARGV[3])
      redis.call('HSET', ARGV[1] .. 'tinytownd:task:' .. tid, 'agent', ARGV[2])
      redis.call('RPUSH', ARGV[1] .. 'inbox:' .. ARGV[2], ARGV[4] .. cjson.encode(tid) .. ARGV[5])
      return tid
    end
  end
end
return false
