-- recover_agent: the sweeper's atomic recovery of a dead agent (heartbeat and lease both stale).
-- KEYS[1] = agent hash  KEYS[2] = inbox  KEYS[3] = urgent  KEYS[4] = inflight
-- KEYS[5] = inflight_urgent  KEYS[6] = lease  KEYS[7] = backlog
-- KEYS[8] = destination inbox  KEYS[9] = destination urgent (same as KEYS[2]/[3] without one)
-- ARGV[1] = key prefix "tt:<town>:"  ARGV[2] = the heartbeat value judged stale (compare-and-set)
-- ARGV[3] = now (RFC 3339 +00:00)   ARGV[4] = destination aid or ""   ARGV[5] = the dead agent's aid
-- Does nothing ({0, reason}) if the lease exists or the heartbeat changed since it was read.
-- Else: in-flight messages go back to the head of their queues (order kept); then, with a
-- destination, every urgent and inbox message moves there (its "to" rewritten, tasks of
-- task_assign messages re-pointed: assigned_to, state assigned); without one, task_assign messages
-- put their task back on the backlog (task → pending, assigned_to/started_at removed) and every
-- other message stays where it is. The agent becomes `stopped` (current_task removed).
-- Returns {1, old state, moved, to backlog, kept, comma-separated task ids touched}.
if redis.call('EXISTS', KEYS[6]) == 1 then return {0, 'leased'} end
local hb = redis.call('HGET', KEYS[1], 'last_heartbeat') or ''
if hb ~= ARGV[2] then return {0, 'alive'} end
local old = redis.call('HGET', KEYS[1], 'state') or 'starting'
while redis.call('LMOVE', KEYS[4], KEYS[2], 'RIGHT', 'LEFT') do end
while redis.call('LMOVE', KEYS[5], KEYS[3], 'RIGHT', 'LEFT') do end
local dest = ARGV[4]
local prefix = ARGV[1]
local moved, backlogged, kept = 0, 0, 0
local touched = {}
local function retarget(raw)
  local needle = '"to":"' .. ARGV[5] .. '"'
  local s, e = string.find(raw, needle, 1, true)
  if not s then return raw end
  return string.sub(raw, 1, s - 1) .. '"to":"' .. dest .. '"' .. string.sub(raw, e + 1)
end
local function task_of(raw)
  local ok, m = pcall(cjson.decode, raw)
  if ok and type(m) == 'table' and m['type'] == 'task_assign' and type(m['task_id']) == 'string' then
    return m['task_id']
  end
  return nil
end
local function live_task(tid)
  local st = redis.call('HGET', prefix .. 'task:' .. tid, 'state')
  return st and st ~= 'completed' and st ~= 'failed' and st ~= 'cancelled'
end
for pass = 1, 2 do
  local src, dst = KEYS[3], KEYS[9]
  if pass == 2 then src, dst = KEYS[2], KEYS[8] end
  local keep = {}
  while true do
    local raw = redis.call('LPOP', src)
    if not raw then break end
    local tid = task_of(raw)
    if dest ~= '' then
      redis.call('RPUSH', dst, retarget(raw))
      moved = moved + 1
      if tid and live_task(tid) then
        redis.call('HSET', prefix .. 'task:' .. tid, 'assigned_to', dest, 'state', 'assigned',
                   'updated_at', ARGV[3])
        redis.call('HSET', prefix .. 'tinytownd:task:' .. tid, 'agent', dest)
        touched[#touched + 1] = tid
      end
    elseif tid then
      if live_task(tid) then
        redis.call('RPUSH', KEYS[7], tid)
        redis.call('HSET', prefix .. 'task:' .. tid, 'state', 'pending', 'updated_at', ARGV[3])
        redis.call('HDEL', prefix .. 'task:' .. tid, 'assigned_to', 'started_at')
        touched[#touched + 1] = tid
        backlogged = backlogged + 1
      end
    else
      keep[#keep + 1] = raw
    end
  end
  for _, raw in ipairs(keep) do redis.call('RPUSH', src, raw) end
  kept = kept + #keep
end
redis.call('HSET', KEYS[1], 'state', 'stopped')
redis.call('HDEL', KEYS[1], 'current_task')
return {1, old, moved, backlogged, kept, table.concat(touched, ',')}
