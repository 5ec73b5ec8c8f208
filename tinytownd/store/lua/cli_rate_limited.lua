-- cli_rate_limited: a round of an agent CLI was rate limited: start or extend the CLI's cooldown,
-- which every agent of the CLI on every daemon honours (take_round.lua reads it).
-- KEYS[1] = the CLI's state hash (keys.cli)
-- ARGV[1] = cooldown_s in ms   ARGV[2] = cooldown_max_s in ms
-- ARGV[3] = the wait the CLI's output named, in ms, or '' (none)
-- ARGV[4] = a random number in [0, 1)   ARGV[5] = jitter (fraction of the computed cooldown)
-- ARGV[6] = the reason (the output line)
-- Times are the Redis server's clock (TIME), so daemons on hosts with skewed clocks agree.
-- While a cooldown runs, another rate limit (a round that started before it) only extends it to
-- what its output named. Otherwise the next level starts: the named wait exactly, else
-- cooldown_s × 2^(level-1) up to cooldown_max_s, plus up to jitter × that. A CLI quiet for longer
-- than cooldown_max_s since its last cooldown ended starts again at level 1.
-- Returns {cooldown_until (ms), now (ms), level, 1 if this call set it else 0}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'cooldown_until', 'cooldown_level')
local untl = tonumber(h[1] or '') or 0
local level = tonumber(h[2] or '') or 0
local base, maxd = tonumber(ARGV[1]), tonumber(ARGV[2])
local named = tonumber(ARGV[3] or '')
if now < untl then
  if named and now + named > untl then
    untl = now + named
    redis.call('HSET', KEYS[1], 'cooldown_until', untl, 'cooldown_reason', ARGV[6],
               'cooldown_s', named / 1000)
    return {untl, now, level, 1}
  end
  return {untl, now, level, 0}
end
if untl > 0 and now - untl > maxd then level = 0 end
level = math.min(level + 1, 40)
local d
if named then
  d = named
else
  d = math.min(base * 2 ^ (level - 1), maxd)
  d = math.floor(d + d * tonumber(ARGV[5]) * tonumber(ARGV[4]))
end
untl = now + d
redis.call('HSET', KEYS[1], 'cooldown_until', untl, 'cooldown_level', level, 'cooldown_reason',
           ARGV[6], 'cooldown_at', now, 'cooldown_s', d / 1000)
return {untl, now, level, 1}
