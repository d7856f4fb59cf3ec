"""The task store's Lua scripts: each changes a task's keys and appends its event in one atomic step."""

# Moves a task to a new status unless it already ended; appends the event. A task that ends also gets
# its one entry on the "done" stream (what long-polls block on) and every key of it expires. A step
# checkpoint may ride along (the last step's, written with the outcome it leads to), ahead of the status.
TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return {0, cur} end
local n = tonumber(ARGV[4])
if ARGV[6 + n] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[6 + n], ARGV[7 + n])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[8 + n])
end
local args = {'status', ARGV[1], 'updated_ms', ARGV[2]}
for i = 1, n do args[#args + 1] = ARGV[4 + i] end
redis.call('HSET', KEYS[1], unpack(args))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[3])
if ARGV[1] == 'succeeded' or ARGV[1] == 'failed' or ARGV[1] == 'cancelled' then
  redis.call('XADD', KEYS[4], '*', 'status', ARGV[1])
  local ttl = tonumber(ARGV[5 + n])
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
end
return {1, cur}
"""

# Cancels a queued, retrying or parked ("waiting") task at once (with its "done" entry; every key of it
# expires, as for any ended task), flags a running one; ended tasks are left alone.
CANCEL = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return '' end
if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return cur end
redis.call('HSET', KEYS[1], 'cancel', '1', 'updated_ms', ARGV[1])
if cur == 'queued' or cur == 'retrying' or cur == 'waiting' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'error', ARGV[3])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[2])
  redis.call('XADD', KEYS[3], '*', 'status', 'cancelled')
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[4])) end
  return 'cancelled'
end
return cur
"""

# Stores a new task with its task.queued event (one command instead of a MULTI block).
CREATE = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[1])
return 1
"""

# The same with an idempotency key, in one step so two submits with one key can never both create a task:
# returns the id of the task the key already names (while that task exists), else '' after creating this one.
CREATE_IDEMPOTENT = """
local existing = redis.call('GET', KEYS[3])
if existing and redis.call('EXISTS', ARGV[4] .. existing) == 1 then return existing end
redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[1])
return ''
"""

# Records a finished step with its event, atomically (one command instead of a MULTI block).
CHECKPOINT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[3])
return 1
"""

# A worker takes a delivered task: one round trip that refuses a missing or ended task, a task running
# under another worker's live lease (owner ARGV[7]; Redis' clock, so workers' clocks do not matter), a
# cancel-flagged task (or one the worker must end without running: ARGV[4] non-empty), else moves it to
# running under a lease of ARGV[8] ms for ARGV[7] (none if ARGV[7] is empty), appends task.started, and
# step.started of the first step (ARGV[5], event ARGV[6]) unless that step is already checkpointed;
# returns whether it did, and the checkpointed steps.
CLAIM = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'missing', ''} end
if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return {'ended', cur} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if cur == 'running' then
  local owner = redis.call('HGET', KEYS[1], 'lease_owner')
  local till = tonumber(redis.call('HGET', KEYS[1], 'lease_until_ms') or '0') or 0
  if owner and owner ~= '' and owner ~= ARGV[7] and till > now then return {'leased', cur} end
end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return {'cancel_requested', cur} end
if ARGV[4] ~= '' then return {'refused', cur} end
redis.call('HSET', KEYS[1], 'status', 'running', 'updated_ms', ARGV[1], 'attempt', ARGV[3])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'lease_owner', ARGV[7], 'lease_until_ms', now + tonumber(ARGV[8]))
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[2])
local announced = ''
if ARGV[5] ~= '' and redis.call('HEXISTS', KEYS[3], ARGV[5]) == 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[6])
  announced = ARGV[5]
end
local out = {'claimed', cur, announced}
local steps = redis.call('HGETALL', KEYS[3])
for i = 1, #steps do out[#out + 1] = steps[i] end
return out
"""

# Extends a running task's lease by ARGV[2] ms, only for its owner ARGV[1]; 0 if the lease is not its own.
RENEW = """
if redis.call('HGET', KEYS[1], 'lease_owner') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'lease_until_ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2]))
return 1
"""

# Gives up a lease (a run handed back unfinished), only for its owner ARGV[1].
RELEASE = """
if redis.call('HGET', KEYS[1], 'lease_owner') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until_ms')
return 1
"""
