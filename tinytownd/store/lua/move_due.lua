-- move_due: the retry timer. Moves delayed envelopes whose time has come back to their list.
-- KEYS[1] = delayed zset (member = JSON envelope {"key","raw","id","head"}, score = due ms)
-- KEYS[2] = deadletter list
-- ARGV[1] = now (ms)   ARGV[2] = max envelopes per call   ARGV[3] = now (RFC 3339 Z, for dead letters)
-- ARGV[4] = key prefix "tt:<town>:"   ARGV[5] = dead-letter entries kept
-- An envelope goes back with RPUSH (tail, as tt requeues normal mail) or LPUSH when "head" is true.
-- An envelope that cannot be read, that names a key other than an inbox or urgent list of this
-- town, or whose list cannot take it (wrong type) goes to the dead-letter list instead.
-- Returns the number of envelopes handled.
--#include deadletter
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local inbox, urgent = ARGV[4] .. 'inbox:', ARGV[4] .. 'urgent:'
for _, env in ipairs(due) do
  local ok, e = pcall(cjson.decode, env)
  local why = nil
  if not (ok and type(e) == 'table' and type(e['key']) == 'string' and type(e['raw']) == 'string') then
    why = 'unreadable delayed envelope'
  elseif string.sub(e['key'], 1, #inbox) ~= inbox and string.sub(e['key'], 1, #urgent) ~= urgent then
    why = 'delayed envelope names a key that is not an inbox or urgent list'
  else
    local res
    if e['head'] == true then
      res = redis.pcall('LPUSH', e['key'], e['raw'])
    else
      res = redis.pcall('RPUSH', e['key'], e['raw'])
    end
    if type(res) == 'table' and res['err'] then why = 'delayed envelope: its list is not a list' end
  end
  if why then deadletter({KEYS[2]}, {why, KEYS[1], env, ARGV[3], ARGV[5], '65536'}) end
  redis.call('ZREM', KEYS[1], env)
end
return #due
