-- ack_round: end of a round. Removes each taken message from its in-flight list (LREM 1) and, for
-- a retry, parks its envelope in the delayed zset in the same atomic step. Anything else still in
-- flight (a stray pushed by a stale BLMOVE) goes back to the queue heads, order kept.
-- KEYS[1] = inflight_urgent  KEYS[2] = inflight  KEYS[3] = urgent  KEYS[4] = inbox
-- KEYS[5] = agent lease      KEYS[6] = delayed zset
-- ARGV[1] = owner token; then groups of 4: list ('u' | 'i'), raw, score ('' = plain ack), envelope
-- Returns 1, or 0 (nothing done) when the lease is not ours: the new owner redelivers.
if redis.call('GET', KEYS[5]) ~= ARGV[1] then return 0 end
-- (a script's writes stay when it fails half-way: check the zset's type before the first LREM)
local zt = redis.call('TYPE', KEYS[6])['ok']
if zt ~= 'zset' and zt ~= 'none' then
  return redis.error_reply('WRONGTYPE the delayed zset holds a ' .. zt)
end
for i = 2, #ARGV, 4 do
  local src = KEYS[2]
  if ARGV[i] == 'u' then src = KEYS[1] end
  local removed = redis.call('LREM', src, 1, ARGV[i + 1])
  if removed == 1 and ARGV[i + 2] ~= '' then
    redis.call('ZADD', KEYS[6], ARGV[i + 2], ARGV[i + 3])
  end
end
while redis.call('LMOVE', KEYS[2], KEYS[4], 'RIGHT', 'LEFT') do end
while redis.call('LMOVE', KEYS[1], KEYS[3], 'RIGHT', 'LEFT') do end
return 1
