-- take_round: take the messages of one agent round into the in-flight lists (at-least-once).
-- KEYS[1] = urgent   KEYS[2] = inbox   KEYS[3] = inflight_urgent   KEYS[4] = inflight
-- KEYS[5] = stop flag   KEYS[6] = agent hash   KEYS[7] = agent lease
-- ARGV[1] = owner token   ARGV[2] = max inbox messages per round
-- ARGV[3] = key prefix "tt:<town>:" (optional: without it no task info is returned)
-- ARGV[4] = largest message (bytes)   ARGV[5] = now (RFC 3339 Z)   ARGV[6] = dead-letter entries kept
-- ARGV[7] = lease ttl (ms): a lease that vanished is taken back (see below)
-- ARGV[8] = now (RFC 3339 +00:00), optional: with it the round's task is started here (below)
-- KEYS[8] = the dead-letter list (with ARGV[4..6]: a message over ARGV[4] bytes is dead-lettered
-- and removed from in-flight here, never sent to the daemon; source = its queue)
-- Run after round_ok in one call (scripts.py COMPOSITES), `...` is round_ok's `fused` table:
-- the lease was checked and the in-flight lists emptied by its ack (fused.acked), and the agent's
-- state is fused.state, so neither is read again; the agent hash is written once, at the end.
-- KEYS[9] = the state hash of the agent's CLI (optional): while the CLI is paused (a fatal error)
-- or cooling down (a rate limit), in-flight items go back to their queues and
-- {'cli_paused', reason} | {'cooldown', until ms, now ms, reason} is returned (Redis clock).
-- If the lease is another daemon's, the stop flag is set, or the agent is paused/stopped, in-flight
-- items go back to their queues (head, order kept) and {'lost', holder}|{'stop'}|{'paused'}|
-- {'stopped'} is returned.
-- Otherwise: every urgent message moves urgent → inflight_urgent (LEFT → RIGHT, so the stack order
-- is kept), then inbox messages move one by one inbox → inflight until one task-bearing message
-- (type task_assign or task) is in flight (messages a BLMOVE already moved count too).
-- Returns {'ok', number of urgent items, {urgent items..., inbox items...}, info} where info
-- describes the first task-bearing message in that order (as cjson reads it), so the worker needs
-- no second round trip: {'task_assign', tid, {task hash, flat}, {daemon task meta, flat}},
-- {'task', message id, {}, {daemon task meta, flat}}, or {} (none / no prefix).
-- The round's start, with ARGV[8] and a task_assign whose task hash exists and is not terminal:
-- agent working + last_active_at + last_heartbeat + current_task, task running + started_at +
-- updated_at, attempts += 1 in the task meta (round_start.lua's writes, without its events), so
-- the worker sends no round_start. info then has three more entries: the attempt number and the
-- task's state and started_at before (for round_unstart.lua, when the worker does not run it).
--#include deadletter
--#include counter
local fused = ...
local known = fused and fused.acked
local maxb = tonumber(ARGV[4] or '') or math.huge
local function task_bearing(raw)
  if #raw > maxb then return false end
  local ok, m = pcall(cjson.decode, raw)
  if ok and type(m) == 'table' then
    local t = m['type']
    return t == 'task_assign' or t == 'task'
  end
  return false
end
local function task_info(raw)
  if #raw > maxb then return nil end
  local ok, m = pcall(cjson.decode, raw)
  if not (ok and type(m) == 'table') then return nil end
  local t = m['type']
  if t == 'task_assign' and type(m['task_id']) == 'string' then
    local tid = m['task_id']
    local h = redis.pcall('HGETALL', ARGV[3] .. 'task:' .. tid)
    if h['err'] then return {} end   -- not a hash: the worker reads it itself (and fails as before)
    local meta = redis.pcall('HGETALL', ARGV[3] .. 'tinytownd:task:' .. tid)
    if meta['err'] then return {} end
    return {t, tid, h, meta}
  elseif t == 'task' and type(m['id']) == 'string' then
    local meta = redis.pcall('HGETALL', ARGV[3] .. 'tinytownd:task:' .. m['id'])
    if meta['err'] then return {} end
    return {t, m['id'], {}, meta}
  elseif t == 'task_assign' or t == 'task' then
    return {}
  end
  return nil
end
local TERMINAL = {completed = true, failed = true, cancelled = true}
local function start(info)
  local h = {}
  for i = 1, #info[3], 2 do h[info[3][i]] = info[3][i + 1] end
  if not h['id'] or TERMINAL[h['state'] or 'pending'] then return end
  local now, tid = ARGV[8], info[2]
  local agent = {'state', 'working', 'last_active_at', now, 'last_heartbeat', now,
                 'current_task', tid}
  if fused then
    fused.key = fused.key or KEYS[6]
    fused.agent = fused.agent or {}
    for _, x in ipairs(agent) do table.insert(fused.agent, x) end
    fused.hdel = false
  else
    redis.call('HSET', KEYS[6], unpack(agent))
  end
  redis.call('HSET', ARGV[3] .. 'task:' .. tid, 'state', 'running', 'started_at', now,
             'updated_at', now)
  info[5] = counter({ARGV[3] .. 'tinytownd:task:' .. tid}, {'attempts', 1})
  info[6] = h['state'] or ''
  info[7] = h['started_at'] or ''
end
local function requeue_all()
  while redis.call('LMOVE', KEYS[4], KEYS[2], 'RIGHT', 'LEFT') do end
  while redis.call('LMOVE', KEYS[3], KEYS[1], 'RIGHT', 'LEFT') do end
end
local holder = known and ARGV[1] or redis.call('GET', KEYS[7])
if not holder and ARGV[7] then
  -- the lease is gone without anyone taking it (Redis lost its data, or we were frozen past
  -- its expiry): nobody else runs the agent, so take it back (NX: one daemon wins)
  if redis.call('SET', KEYS[7], ARGV[1], 'PX', ARGV[7], 'NX') then holder = ARGV[1] end
end
if holder ~= ARGV[1] then requeue_all() return {'lost', holder or ''} end
-- the stop flag: any value of any type means stop, as tt reads it (EXISTS)
if redis.call('EXISTS', KEYS[5]) == 1 then requeue_all() return {'stop'} end
local st
if known then st = fused.state else st = redis.call('HGET', KEYS[6], 'state') end
if st == 'paused' or st == 'stopped' then requeue_all() return {st} end
if KEYS[9] then
  local c = redis.call('HMGET', KEYS[9], 'paused', 'paused_reason', 'cooldown_until',
                       'cooldown_reason')
  if c[1] then requeue_all() return {'cli_paused', c[2] or ''} end
  if c[3] then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local untl = tonumber(c[3]) or 0
    if now < untl then requeue_all() return {'cooldown', untl, now, c[4] or ''} end
  end
end
-- what is in flight: read unless the fused ack just emptied the lists; then what moves in
-- (the lists are only written here meanwhile, so this is their content, without a re-read)
local ulist, ilist = {}, {}
if not known then
  ulist = redis.call('LRANGE', KEYS[3], 0, -1)
  ilist = redis.call('LRANGE', KEYS[4], 0, -1)
end
local tasks = 0
for _, raw in ipairs(ilist) do
  if task_bearing(raw) then tasks = tasks + 1 end
end
for _, raw in ipairs(ulist) do
  if task_bearing(raw) then tasks = tasks + 1 end
end
while true do
  local raw = redis.call('LMOVE', KEYS[1], KEYS[3], 'LEFT', 'RIGHT')
  if not raw then break end
  ulist[#ulist + 1] = raw
  if task_bearing(raw) then tasks = tasks + 1 end
end
local n, maxn = 0, tonumber(ARGV[2])
while tasks == 0 and n < maxn do
  local raw = redis.call('LMOVE', KEYS[2], KEYS[4], 'LEFT', 'RIGHT')
  if not raw then break end
  n = n + 1
  ilist[#ilist + 1] = raw
  if task_bearing(raw) then tasks = tasks + 1 end
end
local function kept(list, queue, content)
  local out = {}
  for _, raw in ipairs(content) do
    if #raw > maxb then
      redis.call('LREM', list, 1, raw)
      deadletter({KEYS[8]}, {'message over ' .. ARGV[4] .. ' bytes', queue, raw, ARGV[5],
                             ARGV[6], '65536'})
    else
      out[#out + 1] = raw
    end
  end
  return out
end
local u = kept(KEYS[3], KEYS[1], ulist)
local items = {}
for _, x in ipairs(u) do items[#items + 1] = x end
for _, x in ipairs(kept(KEYS[4], KEYS[2], ilist)) do items[#items + 1] = x end
local info = {}
if ARGV[3] and tasks > 0 then
  for _, x in ipairs(items) do
    local i = task_info(x)
    if i then info = i break end
  end
end
if ARGV[8] and info[1] == 'task_assign' then start(info) end
return {'ok', #u, items, info}
