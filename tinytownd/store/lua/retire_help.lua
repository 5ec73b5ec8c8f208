-- retire_help: drop the conductor-inbox queries that carry a help marker (a mission that no longer
-- needs help retires its own question atomically, so the conductor never answers a stale one).
-- KEYS[1] = the supervisor's inbox   ARGV[1] = the marker text ("[Mission Help Needed] Mission <mid>")
-- Returns the number of messages dropped; every other message keeps its place.
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local keep, dropped = {}, 0
for _, raw in ipairs(items) do
  local ok, msg = pcall(cjson.decode, raw)
  if ok and type(msg) == 'table' and msg['type'] == 'query' and type(msg['question']) == 'string'
     and string.find(msg['question'], ARGV[1], 1, true) then
    dropped = dropped + 1
  else
    table.insert(keep, raw)
  end
end
if dropped > 0 then
  redis.call('DEL', KEYS[1])
  for i = 1, #keep, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(keep, i, math.min(i + 999, #keep)))
  end
end
return dropped
