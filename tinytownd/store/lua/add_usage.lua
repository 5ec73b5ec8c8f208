-- add_usage: add one round's usage to the hashes that sum it (agent info, task meta, mission
-- meta, and the batch of the task).
-- KEYS = the hashes   ARGV[1] = JSON {"n": {count field: int}, "f": {float field: number},
-- "s": {label field: string}}   ARGV[2] = the index in KEYS of the task meta, which gets the
-- labels (0: none)   ARGV[3] = the daemon key prefix "tt:<town>:tinytownd:" (optional): the
-- batch named by the task meta's `batch` field (batch:<bid>) sums the counts and cost too.
-- Counts HINCRBY, floats HINCRBYFLOAT, labels HSET. Accounting never fails a round's end: every
-- write is a pcall, so a hash of the wrong type (junk some client wrote) is skipped. Returns 1.
local u = cjson.decode(ARGV[1])
local li = tonumber(ARGV[2]) or 0
local targets = {}
for i, key in ipairs(KEYS) do targets[i] = key end
if li > 0 and ARGV[3] and ARGV[3] ~= '' then
  local b = redis.pcall('HGET', KEYS[li], 'batch')
  if type(b) == 'string' and b ~= '' then targets[#targets + 1] = ARGV[3] .. 'batch:' .. b end
end
for i, key in ipairs(targets) do
  if type(u['n']) == 'table' then
    for f, v in pairs(u['n']) do redis.pcall('HINCRBY', key, f, v) end
  end
  if type(u['f']) == 'table' then
    for f, v in pairs(u['f']) do redis.pcall('HINCRBYFLOAT', key, f, v) end
  end
  if i == li and type(u['s']) == 'table' then
    for f, v in pairs(u['s']) do redis.pcall('HSET', key, f, v) end
  end
end
return 1
