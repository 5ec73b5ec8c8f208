-- deadletter: append a dead-letter entry from inside a script (--#include deadletter), in the shape
-- of records.deadletter_entry: {id, reason, source, at, raw_size, raw_base64 (the first ARGV[6]
-- bytes), truncated?}. Lua cannot tell UTF-8 from other bytes cheaply, so the raw value is always
-- base64 here. The list keeps its newest ARGV[5] entries.
-- KEYS[1] = the dead-letter list (its counter of every entry ever added is KEYS[1] .. ':count')
-- ARGV[1] = reason   ARGV[2] = source key   ARGV[3] = raw value   ARGV[4] = now (RFC 3339 Z)
-- ARGV[5] = entries kept   ARGV[6] = raw bytes kept
-- Returns the entry's id.
local b64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = string.byte(s, i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = {}
    for j = 3, 0, -1 do
      local k = math.floor(n / 64 ^ j) % 64 + 1
      q[#q + 1] = string.sub(b64, k, k)
    end
    if not b then q[3], q[4] = '=', '=' elseif not c then q[4] = '=' end
    out[#out + 1] = table.concat(q)
  end
  return table.concat(out)
end
local raw = ARGV[3]
local keep = tonumber(ARGV[6])
local t = redis.call('TIME')
local id = string.format('dl-%s-%06d-%d', t[1], tonumber(t[2]), redis.call('LLEN', KEYS[1]))
local entry = {id = id, reason = ARGV[1], source = ARGV[2], at = ARGV[4], raw_size = #raw,
               raw_base64 = base64(string.sub(raw, 1, keep))}
if #raw > keep then entry['truncated'] = true end
redis.call('RPUSH', KEYS[1], cjson.encode(entry))
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[5]), -1)
redis.call('INCR', KEYS[1] .. ':count')
return id
