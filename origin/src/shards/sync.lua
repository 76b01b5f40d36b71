local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, ttl, leave = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local gm, gs, broken = 0, 0, 0
local function kind(key) return redis.call('TYPE', key)['ok'] end
local function clear(key, want)
  local k = kind(key)
  if k ~= want and k ~= 'none' then redis.call('DEL', key); gm = gm + 1 end
end
clear(KEYS[1], 'zset')
clear(KEYS[2], 'hash')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local id, expiry = entries[i], tonumber(entries[i + 1])
  if #id > 128 or not string.match(id, '^[%w%._:%-]+$') or expiry > now + 3 * ttl then
    redis.call('ZREM', KEYS[1], id); gm = gm + 1
  end
end
if leave then
  redis.call('ZREM', KEYS[1], me); redis.call('HDEL', KEYS[2], me)
else
  redis.call('ZADD', KEYS[1], now + ttl, me)
end
local info, known = redis.call('HGETALL', KEYS[2]), {}
for i = 1, #info, 2 do
  local id, v = info[i], info[i + 1]
  local shards, since = string.match(v, '^(%d+) (%d+)$')
  local live = redis.call('ZSCORE', KEYS[1], id)
  if not shards or tonumber(since) > now then
    redis.call('HDEL', KEYS[2], id); gm = gm + 1
  elseif not live then
    redis.call('HDEL', KEYS[2], id)
  else
    known[id] = {shards, since}
  end
end
if not leave and (not known[me] or known[me][1] ~= ARGV[4]) then
  known[me] = {ARGV[4], tostring(now)}
  redis.call('HSET', KEYS[2], me, ARGV[4] .. ' ' .. now)
end
local members = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local m = known[id]
  if m then
    table.insert(members, id); table.insert(members, m[1]); table.insert(members, m[2])
  else
    redis.call('ZREM', KEYS[1], id); gm = gm + 1
  end
end
local c, counter = redis.pcall('GET', KEYS[3]), nil
if c == false then counter = 0 elseif type(c) == 'string' then counter = tonumber(c) end
if not counter then broken = 1 end
local out = {}
for j = 1, #KEYS - 3 do
  local key, op, held = KEYS[j + 3], ARGV[3 + 2 * j], ARGV[4 + 2 * j]
  local value, e, holder, forged = nil, nil, nil, 0
  -- `n<from>`: renew as a new grant above `from`, below 2^46 so that the epochs stay
  -- below 10^14, where Lua stops printing numbers as integers.
  local from = tonumber(string.match(op, '^n(%d+)$'))
  if from and from >= 70368744177664 then from = nil end
  local k = kind(key)
  if k == 'string' then value = redis.call('GET', key) elseif k ~= 'none' then redis.call('DEL', key); forged = 1 end
  if value then
    local pttl = redis.call('PTTL', key)
    e, holder = string.match(value, '^(%d+) (.+)$')
    local n = tonumber(e)
    if not n or n < 1 or (counter and n > counter) or pttl < 0 or pttl > 3 * ttl then
      redis.call('DEL', key); value = nil; forged = 1
    end
  end
  local result = 0
  if op == 'r' then
    -- At or above `held`: a later grant to this origin is its own reissue whose reply
    -- was lost, which it does not use; kept, it would block the shard for a lease.
    if value and holder == me and tonumber(e) >= tonumber(held) then redis.call('DEL', key) end
    result = -1
  elseif value and holder == me and e == held then
    if from and counter then
      -- Held by this origin under `held`, so no later grant of it exists: the placement
      -- fence above `held` comes from a counter that went back (a restore) or a forgery.
      if counter < from then redis.call('SET', KEYS[3], string.format('%d', from)) end
      counter = redis.call('INCR', KEYS[3])
      redis.call('SET', key, string.format('%d', counter) .. ' ' .. me, 'PX', ttl); result = counter
    else
      redis.call('PEXPIRE', key, ttl); result = tonumber(e)
    end
  elseif value and holder == me and from and tonumber(e) > from then
    -- This origin's own reissue, whose reply was lost: renewed under it.
    redis.call('PEXPIRE', key, ttl); result = tonumber(e)
  elseif value and holder ~= me then
    result = 0
  else
    if value and held ~= '0' then forged = 1 end
    local n = counter and redis.pcall('INCR', KEYS[3])
    if type(n) == 'number' then
      counter = n
      redis.call('SET', key, string.format('%d', n) .. ' ' .. me, 'PX', ttl); result = n
    else
      broken = 1
    end
  end
  gs = gs + forged
  table.insert(out, result)
end
return {now, gm, gs, broken, members, out}
