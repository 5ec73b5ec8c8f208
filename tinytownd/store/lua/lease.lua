-- lease: the per-agent ownership lease (keys.agent_lease). Value = owner token
-- "<instance id> <host> <pid>" of the daemon that runs the agent.
-- KEYS[1] = tt:<town>:tinytownd:lease:agent:<aid>
-- ARGV[1] = op: acquire | renew | release | steal   ARGV[2] = owner token   ARGV[3] = ttl (ms)
-- ARGV[4] = (steal only) the token expected to hold the lease now (a dead local daemon's)
-- acquire: SET NX PX (or re-arm our own lease) → 1, else 0.  renew: compare-and-PEXPIRE → 1, or
-- (the key vanished: Redis lost its data, or its expiry passed with nobody taking it) SET → 2, or
-- another owner's → 0.
-- release: compare-and-DEL → 1/0.  steal: compare-and-SET → 1/0.
local cur = redis.call('GET', KEYS[1])
local op = ARGV[1]
if op == 'acquire' then
  if cur == ARGV[2] then redis.call('PEXPIRE', KEYS[1], ARGV[3]) return 1 end
  -- no lease, or one without an expiry (every lease is written with PX: that is junk, and would
  -- keep the agent from running for ever)
  if not cur or redis.call('PTTL', KEYS[1]) == -1 then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1
  end
  return 0
elseif op == 'renew' then
  if cur == ARGV[2] then redis.call('PEXPIRE', KEYS[1], ARGV[3]) return 1 end
  if not cur then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 2 end
  return 0
elseif op == 'release' then
  if cur == ARGV[2] then redis.call('DEL', KEYS[1]) return 1 end
  return 0
elseif op == 'steal' then
  if cur == ARGV[4] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end
  return 0
end
return redis.error_reply('unknown lease op ' .. tostring(op))
