-- add_usage: add one round's usage to the hashes that sum it (task meta, agent info, mission meta).
-- KEYS = the hashes   ARGV[1] = JSON {"n": {count field: int}, "f": {float field: number},
-- "s": {label field: string}}   ARGV[2] = the index in KEYS of the hash that gets the labels
-- (0: none). Counts HINCRBY, floats HINCRBYFLOAT, labels HSET. Returns 1.
local u = cjson.decode(ARGV[1])
local li = tonumber(ARGV[2]) or 0
for i, key in ipairs(KEYS) do
  if type(u['n']) == 'table' then
    for f, v in pairs(u['n']) do redis.call('HINCRBY', key, f, v) end
  end
  if type(u['f']) == 'table' then
    for f, v in pairs(u['f']) do redis.call('HINCRBYFLOAT', key, f, v) end
  end
  if i == li and type(u['s']) == 'table' then
    for f, v in pairs(u['s']) do redis.call('HSET', key, f, v) end
  end
end
return 1
