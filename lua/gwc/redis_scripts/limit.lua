-- gwc fleet limits: GCRA rate buckets plus an optional quota counter, checked
-- together and charged all or none, so a refused request costs nothing.
--
-- KEYS: the rate keys, then the quota key (optional); all share one hash tag.
-- ARGV[1]: "c" to check and charge, "u" to undo an earlier charge (a later
--          hash-tag group refused in Redis Cluster, where no script spans slots).
-- ARGV[2]: the number of rate keys n; ARGV[1+2i], ARGV[2+2i]: emission interval
--          T and tolerance tau of rate key i, in milliseconds.
-- After them, when there is a quota key: its limit and its period end (epoch s).
--
-- The clock is the server's (TIME), so gateways with skewed clocks agree.
-- Reply (charge): {0, remaining_1, reset_s_1, ..., quota_remaining, quota_used}
-- when allowed; {i, retry_after_ms} when KEYS[i] refused (0 ms for the quota,
-- whose retry is the period end the gateway already knows). Undo replies {0}.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local mode = ARGV[1]
local nrate = tonumber(ARGV[2])
local quota_key = KEYS[nrate + 1]
local qarg = 3 + 2 * nrate

if mode == 'u' then
    for i = 1, nrate do
        if redis.call('EXISTS', KEYS[i]) == 1 then
            redis.call('INCRBYFLOAT', KEYS[i], -tonumber(ARGV[1 + 2 * i]))
        end
    end
    if quota_key and redis.call('HEXISTS', quota_key, 'used') == 1 then
        redis.call('HINCRBY', quota_key, 'used', -1)
    end
    return {0}
end

local tats = {}
for i = 1, nrate do
    local interval = tonumber(ARGV[1 + 2 * i])
    local tau = tonumber(ARGV[2 + 2 * i])
    local base = tonumber(redis.call('GET', KEYS[i])) or now
    if base < now then
        base = now
    end
    if base - now > tau then
        return {i, math.ceil(base - tau - now)}
    end
    tats[i] = base + interval
end
local used
if quota_key then
    used = tonumber(redis.call('HGET', quota_key, 'used')) or 0
    if used + 1 > tonumber(ARGV[qarg]) then
        return {nrate + 1, 0}
    end
end

local reply = {0}
for i = 1, nrate do
    local interval = tonumber(ARGV[1 + 2 * i])
    local tau = tonumber(ARGV[2 + 2 * i])
    local tat = tats[i]
    redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
    -- The epsilon absorbs float rounding: an idle bucket has exactly C - 1 left.
    reply[2 * i] = math.floor((tau + interval - (tat - now)) / interval + 1e-3)
    reply[2 * i + 1] = math.ceil((tat - now) / 1000 - 1e-3)
end
if quota_key then
    local limit = tonumber(ARGV[qarg])
    local reset = tonumber(ARGV[qarg + 1])
    used = redis.call('HINCRBY', quota_key, 'used', 1)
    redis.call('HSET', quota_key, 'limit', limit, 'reset', reset)
    redis.call('EXPIREAT', quota_key, reset + 60)
    reply[2 * nrate + 2] = limit - used
    reply[2 * nrate + 3] = used
end
return reply
