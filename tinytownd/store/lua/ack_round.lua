-- ack_round: end of a round. Removes each taken message from its in-flight list and, for a retry,
-- parks its envelope in the delayed zset in the same atomic step. Anything else still in flight
-- (a message the round deferred, a stray pushed by a stale BLMOVE) goes back to the queue heads,
-- order kept.
-- KEYS[1] = inflight_urgent  KEYS[2] = inflight  KEYS[3] = urgent  KEYS[4] = inbox
-- KEYS[5] = agent lease      KEYS[6] = delayed zset
-- ARGV[1] = owner token; then groups of 4: list ('u' | 'i'), raw, score ('' = plain ack), envelope.
-- A group whose list is 'U' only says "the round took urgent messages": inflight_urgent is
-- emptied only then (take_round is its only writer, so it is empty otherwise).
-- The in-flight lists are emptied with LPOP <count> (one command for a round's usual single
-- message, instead of an LREM per message and an LMOVE per list to find it empty).
-- Returns 1, or 0 (nothing done) when the lease is not ours: the new owner redelivers.
if redis.call('GET', KEYS[5]) ~= ARGV[1] then return 0 end
local want = {u = {}, i = {}}
local urgent, zadd = false, false
for i = 2, #ARGV, 4 do
  local l = ARGV[i]
  if l == 'U' or l == 'u' then urgent = true end
  if l == 'u' or l == 'i' then
    local w = want[l]
    local raw = ARGV[i + 1]
    w[raw] = w[raw] or {}
    table.insert(w[raw], {ARGV[i + 2], ARGV[i + 3]})
    if ARGV[i + 2] ~= '' then zadd = true end
  end
end
-- (a script's writes stay when it fails half-way: check the zset's type before the first pop)
if zadd then
  local zt = redis.call('TYPE', KEYS[6])['ok']
  if zt ~= 'zset' and zt ~= 'none' then
    return redis.error_reply('WRONGTYPE the delayed zset holds a ' .. zt)
  end
end
local POP = 100
local function drain(src, dst, w)
  local back = {}
  while true do
    local got = redis.call('LPOP', src, POP)
    if not got then break end
    for _, raw in ipairs(got) do
      local e = w[raw] and table.remove(w[raw], 1)
      if e then
        if e[1] ~= '' then redis.call('ZADD', KEYS[6], e[1], e[2]) end
      else
        back[#back + 1] = raw
      end
    end
    if #got < POP then break end
  end
  -- back to the head in their order: LPUSH the last chunk first, each chunk reversed
  local first = #back - ((#back - 1) % POP)
  while first >= 1 do
    local rev = {}
    for j = math.min(first + POP - 1, #back), first, -1 do rev[#rev + 1] = back[j] end
    redis.call('LPUSH', dst, unpack(rev))
    first = first - POP
  end
end
drain(KEYS[2], KEYS[4], want.i)
if urgent then drain(KEYS[1], KEYS[3], want.u) end
return 1
