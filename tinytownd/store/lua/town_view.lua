-- town_view: what the HTTP listener shows, read in one call (read-only; /metrics, /api/scaling
-- and the dashboard share it). A script instead of a pipeline: with 1,000 agents a pipeline of
-- 3,000 commands costs the daemon ~30 ms of Python; this costs Redis ~2 ms.
-- ARGV[1] = town prefix "tt:<town>:"   ARGV[2] = daemon prefix "tt:<town>:tinytownd:"
-- ARGV[3] = inbox messages looked at per agent (townhall: 100)
-- ARGV[4] = messages looked at in all (a bound on the time Redis spends here)
-- ARGV[5] = F, the number of agent fields; ARGV[6 .. 5+F] = the field names
-- ARGV[6+F ..] = agent ids from the listener's last key scan (the daemon's name map is added)
-- Returns {backlog, active missions, dead letters, then per readable agent: F field values,
-- inbox length, urgent length, task messages among the first ARGV[3] of the inbox}.
-- A key of the wrong type counts as empty; an agent key that is not a hash is skipped.
local town, daemon = ARGV[1], ARGV[2]
local peek, budget, nf = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local fields = {}
for i = 1, nf do fields[i] = ARGV[5 + i] end
local function num(reply)
  if type(reply) == 'number' then return reply end
  return 0
end
local seen, ids = {}, {}
for i = 6 + nf, #ARGV do
  if not seen[ARGV[i]] then seen[ARGV[i]] = true; ids[#ids + 1] = ARGV[i] end
end
local names = redis.pcall('HVALS', daemon .. 'agent_names')
if type(names) == 'table' and not names['err'] then
  for _, id in ipairs(names) do
    if not seen[id] then seen[id] = true; ids[#ids + 1] = id end
  end
end
local out = {num(redis.pcall('LLEN', town .. 'backlog')),
             num(redis.pcall('SCARD', town .. 'mission:active')),
             num(redis.pcall('LLEN', daemon .. 'deadletter'))}
for _, id in ipairs(ids) do
  local rec = redis.pcall('HMGET', town .. 'agent:' .. id, unpack(fields))
  if type(rec) == 'table' and not rec['err'] and rec[1] then
    for i = 1, nf do out[#out + 1] = rec[i] end
    local inbox = num(redis.pcall('LLEN', town .. 'inbox:' .. id))
    out[#out + 1] = inbox
    out[#out + 1] = num(redis.pcall('LLEN', town .. 'urgent:' .. id))
    local tasks = 0
    if inbox > 0 and budget > 0 then
      local n = math.min(peek, budget)
      budget = budget - n
      local msgs = redis.pcall('LRANGE', town .. 'inbox:' .. id, 0, n - 1)
      if type(msgs) == 'table' and not msgs['err'] then
        for _, m in ipairs(msgs) do
          if string.find(m, '"type":"task_assign"', 1, true)
             or string.find(m, '"type":"task"', 1, true) then
            tasks = tasks + 1
          end
        end
      end
    end
    out[#out + 1] = tasks
  end
end
return out
