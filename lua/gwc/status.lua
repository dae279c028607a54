-- The status listener's endpoints (x-gateway.status), one function per
-- location. They answer operators and scrapers, not API clients: nothing
-- here runs on the public listeners.
local cjson = require "cjson.safe"
local quota_period = require "gwc.quota_period"

local ngx = ngx
local encode = cjson.encode
local shared = ngx.shared
local say = ngx.print
local exit = ngx.exit
local header = ngx.header
local get_method = ngx.req.get_method
local get_uri_args = ngx.req.get_uri_args
local ngx_time = ngx.time
local os_date = os.date
local io_open = io.open
local concat = table.concat
local sort = table.sort
local match = string.match
local sub = string.sub
local pairs = pairs
local type = type
local tonumber = tonumber
local tostring = tostring

local _M = { _VERSION = "0.1.0" }

-- The quota settings and the dict name of this build, read from access.json
-- once per worker: a reload starts new workers, which read the new build.
local traffic

local function data_path()
    local source = debug.getinfo(1, "S").source
    local dir = source:sub(2):match("^(.*)/[^/]*$") or "."
    return dir .. "/data/access.json"
end

local function load_traffic()
    if traffic then
        return traffic
    end
    local file, err = io_open(data_path(), "rb")
    if not file then
        return nil, "cannot read access.json: " .. tostring(err)
    end
    local text = file:read("*a")
    file:close()
    local data, derr = cjson.decode(text)
    if type(data) ~= "table" then
        return nil, "cannot parse access.json: " .. tostring(derr)
    end
    local raw = type(data.traffic) == "table" and data.traffic or {}
    local quotas = {}
    for name, plan in pairs(type(raw.plans) == "table" and raw.plans or {}) do
        local quota = type(plan) == "table" and plan.quota
        -- Fleet quotas live in Redis (gwc usage --redis); this node holds none.
        if type(quota) == "table" and quota.scope ~= "fleet" and tonumber(quota.limit) then
            quotas[name] = { limit = tonumber(quota.limit), period = quota.period, offset = tonumber(quota.offset) or 0 }
        end
    end
    traffic = { dict = raw.dict or "gwc_limits", quotas = quotas }
    return traffic
end

local function iso(epoch)
    return os_date("!%Y-%m-%dT%H:%M:%SZ", epoch)
end

-- One record as JSON text, its members in a fixed order so that output is stable.
local function usage_record(consumer, plan, used, limit, start_s, end_s)
    local remaining = limit - used
    if remaining < 0 then
        remaining = 0 -- the limit was lowered below what was already used
    end
    return '{"consumer":' .. encode(consumer) .. ',"plan":' .. encode(plan)
        .. ',"used":' .. used .. ',"limit":' .. limit .. ',"remaining":' .. remaining
        .. ',"period_start":"' .. iso(start_s) .. '","period_start_epoch":' .. start_s
        .. ',"reset":"' .. iso(end_s) .. '","reset_epoch":' .. end_s .. '}'
end

-- The node-scope quota counters of the current periods, as written by
-- gwc.limits: `q:<plan>:<period start>:<consumer>` (or `ip:<addr>` for a
-- request without a consumer) -> the count.
local function node_usage(conf, now, only_plan, only_consumer)
    local dict = shared[conf.dict]
    local rows = {}
    if not dict then
        return rows -- no limits in this build
    end
    local current = {}
    for name, quota in pairs(conf.quotas) do
        local start_s, end_s = quota_period.bounds(quota.period, quota.offset, now)
        if start_s then
            current[name] = { start_s = start_s, end_s = end_s, limit = quota.limit }
        end
    end
    -- get_keys locks the dict while it copies the key list; a status poll
    -- every few seconds costs the hot path that, and the dict has no
    -- prefix scan to do better.
    local keys = dict:get_keys(0)
    for i = 1, #keys do
        local key = keys[i]
        if sub(key, 1, 2) == "q:" then
            local plan, start_text, consumer = match(key, "^q:([A-Za-z0-9_-]+):(%d+):(.+)$")
            local period = plan and current[plan]
            if period and tonumber(start_text) == period.start_s
                    and (not only_plan or only_plan == plan)
                    and (not only_consumer or only_consumer == consumer) then
                local used = dict:get(key)
                if type(used) == "number" then
                    rows[#rows + 1] = { consumer = consumer, plan = plan, used = used, period = period }
                end
            end
        end
    end
    sort(rows, function(a, b)
        if a.consumer ~= b.consumer then
            return a.consumer < b.consumer
        end
        return a.plan < b.plan
    end)
    for i = 1, #rows do
        local r = rows[i]
        rows[i] = usage_record(r.consumer, r.plan, r.used, r.period.limit, r.period.start_s, r.period.end_s)
    end
    return rows
end

local function single_arg(args, name)
    local value = args[name]
    if type(value) == "table" then
        value = value[1]
    end
    if type(value) ~= "string" or value == "" then
        return nil
    end
    return value
end

-- GET /usage[?plan=P&consumer=ID]: this node's quota use per consumer and
-- plan in the current period (AWS GetUsage for node-scope quotas).
function _M.usage()
    local method = get_method()
    if method ~= "GET" and method ~= "HEAD" then
        header["Allow"] = "GET, HEAD"
        return exit(405)
    end
    local conf, err = load_traffic()
    if not conf then
        ngx.log(ngx.ERR, "gwc status: ", err)
        return exit(500)
    end
    local args = get_uri_args(16)
    local now = ngx_time()
    local rows = node_usage(conf, now, single_arg(args, "plan"), single_arg(args, "consumer"))
    header["Content-Type"] = "application/json"
    say('{"scope":"node","time":"', iso(now), '","time_epoch":', now, ',"usage":[', concat(rows, ","), "]}\n")
    return exit(200)
end

return _M
