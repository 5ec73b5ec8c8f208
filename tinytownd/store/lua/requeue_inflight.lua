-- requeue_inflight: put an agent's in-flight messages back at the head of their queues, order kept
-- (worker (re)start after a crash; recovery). inflight → inbox, inflight_urgent → urgent.
-- KEYS[1] = inflight_urgent  KEYS[2] = inflight  KEYS[3] = urgent  KEYS[4] = inbox
-- Returns the number of messages moved.
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[4], 'RIGHT', 'LEFT') do n = n + 1 end
while redis.call('LMOVE', KEYS[1], KEYS[3], 'RIGHT', 'LEFT') do n = n + 1 end
return n
