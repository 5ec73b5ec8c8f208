-- move_due: the retry timer. Moves delayed envelopes whose time has come back to their list.
-- KEYS[1] = delayed zset (member = JSON envelope {"key","raw","id","head"}, score = due ms)
-- KEYS[2] = deadletter list (for envelopes that cannot be read)
-- ARGV[1] = now (ms)   ARGV[2] = max envelopes per call   ARGV[3] = now (RFC 3339, for dead letters)
-- An envelope goes back with RPUSH (tail, as tt requeues normal mail) or LPUSH when "head" is true.
-- Returns the number of envelopes handled.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, env in ipairs(due) do
  local ok, e = pcall(cjson.decode, env)
  if ok and type(e) == 'table' and type(e['key']) == 'string' and type(e['raw']) == 'string' then
    if e['head'] == true then
      redis.call('LPUSH', e['key'], e['raw'])
    else
      redis.call('RPUSH', e['key'], e['raw'])
    end
  else
    redis.call('RPUSH', KEYS[2], cjson.encode({reason = 'unreadable delayed envelope',
      source = KEYS[1], raw = env, at = ARGV[3]}))
  end
  redis.call('ZREM', KEYS[1], env)
end
return #due
