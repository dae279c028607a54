-- Rate limits (GCRA) and plan quotas, on this node (a lua_shared_dict) or
-- across the fleet (one Redis script per hash-tag group).
--
-- Every limit is a token bucket of capacity C refilled every T ms, kept as
-- its theoretical arrival time TAT. A request at `now` is allowed iff
-- max(TAT, now) - now <= tau = (C - 1) * T, and then TAT := max(TAT, now) + T.
-- All the limits of a request are checked before any refusal counts: a
-- refused request is charged nowhere.
local quota_period = require "gwc.quota_period"

local ngx = ngx
local ngx_now = ngx.now
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local md5 = ngx.md5
local shared = ngx.shared
local floor = math.floor
local ceil = math.ceil
local huge = math.huge
local format = string.format
local find = string.find
local concat = table.concat
local sort = table.sort
local next = next
local type = type
local pairs = pairs
local tostring = tostring
local tonumber = tonumber
local io_open = io.open

local _M = { _VERSION = "0.1.0" }

local KIND_IP, KIND_CONSUMER, KIND_ROUTE, KIND_GLOBAL, KIND_CLAIM, KIND_HEADER = 1, 2, 3, 4, 5, 6
local KINDS = { ip = KIND_IP, consumer = KIND_CONSUMER, route = KIND_ROUTE, global = KIND_GLOBAL,
                claim = KIND_CLAIM, header = KIND_HEADER }
local PERIODS = { day = true, week = true, month = true }
-- remaining and reset come from float TATs; the epsilon keeps an idle
-- bucket at exactly C - 1 and a T-second wait at T, not T + 1.
local EPS = 1e-3

local var = ngx.var
local function clock_ms()
    return ngx_now() * 1000
end
local now_ms = clock_ms

local dict
local ietf, legacy = true, false
local plans = {}
local default_plan
local client, script, standalone, deny_on_error
local redis_open = "gwc:{"
local last_error_log = 0

-- Tests drive the real functions with a simulated clock (ms) and a plain
-- table in place of ngx.var; nil restores the real ones.
function _M._set_clock(fn)
    now_ms = fn or clock_ms
end

function _M._set_var(tbl)
    var = tbl or ngx.var
end

local function module_dir()
    local source = debug.getinfo(1, "S").source
    return source:sub(2):match("^(.*)/[^/]*$") or "."
end

local function read_file(path)
    local file, err = io_open(path, "rb")
    if not file then
        return nil, "cannot read " .. path .. ": " .. tostring(err)
    end
    local text = file:read("*a")
    file:close()
    return text
end

local function policy_item(name, q, w)
    return '"' .. name .. '";q=' .. tostring(q) .. ";w=" .. tostring(w)
end

-- A compiled rate limit; `name` and `order` are those of the request's
-- policy list (plan limits get their policy names from the plan).
local function compile_rate(raw, name, op_id, order)
    if type(raw) ~= "table" then
        return nil, "a limit is not an object"
    end
    local kind = KINDS[raw.key]
    if not kind then
        return nil, "limit " .. tostring(name) .. ": unknown key " .. tostring(raw.key)
    end
    local interval, capacity = tonumber(raw.interval), tonumber(raw.capacity)
    if not interval or interval <= 0 or not capacity or capacity < 1 then
        return nil, "limit " .. tostring(name) .. ": bad interval or capacity"
    end
    local id = raw.id
    if type(id) ~= "string" or not find(id, "^[0-9a-f]+$") then
        return nil, "limit " .. tostring(name) .. ": bad id"
    end
    local arg = raw.arg
    if (kind == KIND_CLAIM or kind == KIND_HEADER) and (type(arg) ~= "string" or arg == "") then
        return nil, "limit " .. tostring(name) .. ": key " .. raw.key .. " needs an arg"
    end
    local fleet = raw.scope == "fleet"
    if fleet and not client then
        return nil, "limit " .. tostring(name) .. ": scope fleet without traffic.redis"
    end
    local tau = (capacity - 1) * interval
    local q, w = tonumber(raw.q) or 0, tonumber(raw.w) or 0
    local lim = {
        kind = kind,
        name = name,
        order = order,
        fleet = fleet,
        interval = interval,
        tau = tau,
        q = q,
        policy = policy_item(name, q, w),
        rl_open = '"' .. name .. '";r=',
        claim = kind == KIND_CLAIM and arg or nil,
        header_var = kind == KIND_HEADER and "http_" .. arg or nil,
        node_prefix = "r:" .. id .. ":",
        redis_suffix = "}:r:" .. id,
        redis_interval = format("%.17g", interval),
        redis_tau = format("%.17g", tau),
    }
    if kind == KIND_ROUTE then
        lim.fixed_tag = "r:" .. op_id
    elseif kind == KIND_GLOBAL then
        lim.fixed_tag = "g"
    end
    if lim.fixed_tag then
        lim.node_key = lim.node_prefix .. lim.fixed_tag
    end
    return lim
end

local function compile_quota(raw, plan_name)
    if type(raw) ~= "table" then
        return nil, "plan " .. plan_name .. ": quota is not an object"
    end
    local limit, offset = tonumber(raw.limit), tonumber(raw.offset) or 0
    if not limit or limit < 0 or not PERIODS[raw.period] then
        return nil, "plan " .. plan_name .. ": bad quota limit or period"
    end
    if (raw.period == "week" and (offset < 0 or offset > 6)) or (raw.period == "month" and (offset < 0 or offset > 27)) then
        return nil, "plan " .. plan_name .. ": quota offset out of range"
    end
    local fleet = raw.scope == "fleet"
    if fleet and not client then
        return nil, "plan " .. plan_name .. ": fleet quota without traffic.redis"
    end
    local name = plan_name .. "-quota"
    return {
        quota = true,
        name = name,
        plan = plan_name,
        fleet = fleet,
        q = limit,
        limit = limit,
        redis_limit = tostring(limit),
        period = raw.period,
        offset = offset,
        rl_open = '"' .. name .. '";r=',
        -- The current period, refreshed per worker when it ends (see refresh_period).
        start_s = 0,
        end_s = -1,
    }
end

-- Counters are keyed by the period start, so a new period starts at zero
-- without anyone deleting the old one (its TTL does, a minute after the end).
local function refresh_period(quota, now_s)
    local start_s, end_s = quota_period.bounds(quota.period, quota.offset, now_s)
    quota.start_s = start_s
    quota.end_s = end_s
    quota.node_prefix = "q:" .. quota.plan .. ":" .. start_s .. ":"
    quota.redis_suffix = "}:q:" .. quota.plan .. ":" .. start_s
    quota.redis_reset = tostring(end_s)
    quota.policy = policy_item(quota.name, quota.limit, end_s - start_s)
end

-- traffic is access.json's "traffic"; redis_client a gwc.redis client when
-- traffic.redis is set. Runs in init_by_lua (the master).
function _M.configure(traffic, redis_client)
    if type(traffic) ~= "table" then
        return nil, "traffic is not an object"
    end
    local dict_name = traffic.dict or "gwc_limits"
    local shm = shared[dict_name]
    if not shm then
        return nil, "no lua_shared_dict " .. tostring(dict_name)
    end
    local mode = traffic.headers or "ietf"
    if mode ~= "ietf" and mode ~= "legacy" and mode ~= "both" and mode ~= "none" then
        return nil, "unknown headers mode " .. tostring(mode)
    end
    local redis_conf = traffic.redis
    local new_script
    if type(redis_conf) == "table" then
        if not redis_client then
            return nil, "traffic.redis is set but there is no Redis client"
        end
        local source, err = read_file(module_dir() .. "/redis_scripts/limit.lua")
        if not source then
            return nil, err
        end
        new_script = require("gwc.redis").script(source)
    elseif redis_conf ~= nil then
        return nil, "traffic.redis is not an object"
    end
    -- Module state is replaced only once everything below compiles.
    local old = { client, script, standalone, deny_on_error, redis_open }
    client = redis_conf and redis_client or nil
    script = new_script
    standalone = redis_conf and redis_conf.cluster == nil or false
    deny_on_error = redis_conf and redis_conf.on_error == "deny" or false
    redis_open = (redis_conf and redis_conf.prefix or "gwc") .. ":{"

    local new_plans = {}
    local err
    for name, raw in pairs(type(traffic.plans) == "table" and traffic.plans or {}) do
        if type(name) ~= "string" or not find(name, "^[A-Za-z0-9_-]+$") or type(raw) ~= "table" then
            err = "bad plan " .. tostring(name)
            break
        end
        local plan = { name = name, rate = raw.rate, operations = raw.operations or {} }
        if raw.quota ~= nil then
            plan.quota, err = compile_quota(raw.quota, name)
            if not plan.quota then
                break
            end
        end
        -- Validate the plan's limits now, so a bad one stops the load instead
        -- of the first request that needs it.
        if raw.rate ~= nil then
            local ok, rerr = compile_rate(raw.rate, name, "", 1)
            if not ok then
                err = rerr
                break
            end
        end
        for op_id, override in pairs(plan.operations) do
            local ok, rerr = compile_rate(override, name .. "." .. tostring(op_id), op_id, 1)
            if not ok then
                err = rerr
                break
            end
        end
        if err then
            break
        end
        new_plans[name] = plan
    end
    local new_default = traffic.default_plan
    if not err and new_default ~= nil and not new_plans[new_default] then
        err = "default_plan " .. tostring(new_default) .. " is not a declared plan"
    end
    if err then
        client, script, standalone, deny_on_error, redis_open = old[1], old[2], old[3], old[4], old[5]
        return nil, err
    end
    dict = shm
    ietf = mode == "ietf" or mode == "both"
    legacy = mode == "legacy" or mode == "both"
    plans = new_plans
    default_plan = new_default and new_plans[new_default] or nil
    return true
end

-- The limits of one request, in policy order: the operation's, then the
-- plan's rate (or its override for this operation), then the plan quota.
local function build_entry(op_id, op_limits, plan)
    local node, fleet = {}, {}
    local order = 0
    local function add(lim)
        if lim.fleet then
            fleet[#fleet + 1] = lim
        else
            node[#node + 1] = lim
        end
    end
    for i = 1, #op_limits do
        order = order + 1
        local raw = op_limits[i]
        local lim, err = compile_rate(raw, type(raw) == "table" and raw.name or "?", op_id, order)
        if not lim then
            return nil, err
        end
        add(lim)
    end
    local quota
    if plan then
        local override = plan.operations[op_id]
        local raw, name = plan.rate, plan.name
        if override ~= nil then
            raw, name = override, plan.name .. "." .. op_id
        end
        if raw ~= nil then
            order = order + 1
            local lim, err = compile_rate(raw, name, op_id, order)
            if not lim then
                return nil, err
            end
            add(lim)
        end
        quota = plan.quota
    end
    if not node[1] and not fleet[1] and not quota then
        return false
    end
    return {
        node = node,
        fleet = fleet,
        quota = quota,
        quota_order = order + 1,
        n_node = #node,
        -- The policy list, rebuilt only when the quota's period (and so,
        -- for a month, its window) changes.
        policy = nil,
        policy_start = nil,
    }
end

-- At module level: a closure created inside entry_policy would make each of
-- its returns run UCLO, which LuaJIT does not compile, aborting the traces
-- through check() and access.run().
local function by_order(a, b)
    return a.order < b.order
end

local function entry_policy(entry)
    local quota = entry.quota
    if entry.policy and (not quota or entry.policy_start == quota.start_s) then
        return entry.policy
    end
    local items, lims = {}, {}
    for i = 1, #entry.node do
        lims[#lims + 1] = entry.node[i]
    end
    for i = 1, #entry.fleet do
        lims[#lims + 1] = entry.fleet[i]
    end
    sort(lims, by_order)
    for i = 1, #lims do
        items[i] = lims[i].policy
    end
    if quota then
        items[#items + 1] = quota.policy
        entry.policy_start = quota.start_s
    end
    entry.policy = concat(items, ", ")
    return entry.policy
end

-- op_entry is access.json's operations[op_id]; nil step when no limit can
-- apply to the operation. Runs at load, after configure.
function _M.compile(op_id, op_entry)
    if type(op_entry) ~= "table" then
        return nil, "operation entry is not an object"
    end
    local op_limits = op_entry.limits
    if op_limits ~= nil and type(op_limits) ~= "table" then
        return nil, "limits is not a list"
    end
    op_limits = op_limits or {}
    local uses_plans = op_entry.plans == true and next(plans) ~= nil
    local base, err = build_entry(op_id, op_limits, nil)
    if base == nil then
        return nil, err
    end
    -- Compile every plan's entry now so that a bad override fails the load;
    -- workers then share the entries read-only (apart from period caches).
    local by_plan = {}
    if uses_plans then
        for name, plan in pairs(plans) do
            local entry, perr = build_entry(op_id, op_limits, plan)
            if entry == nil then
                return nil, perr
            end
            by_plan[name] = entry
        end
    end
    if not base and not uses_plans then
        return nil
    end
    local needs_consumer = uses_plans
    for i = 1, #op_limits do
        if type(op_limits[i]) == "table" and op_limits[i].key == "consumer" then
            needs_consumer = true
        end
    end
    return {
        op_id = op_id,
        plans = uses_plans,
        needs_consumer = needs_consumer,
        base = base,
        by_plan = by_plan,
    }
end

-- What a limit counts by for this request, as a tag prefix and a value.
-- Absent consumers, claims and headers give no value: the caller counts by
-- client IP instead (Kong's fallback), so leaving them out escapes nothing.
-- Each source has its own prefix, so no value of one collides with another's.
local function key_source(lim, consumer, claims)
    local kind = lim.kind
    if kind == KIND_CONSUMER or lim.quota then
        if consumer then
            return "c:", consumer
        end
    elseif kind == KIND_HEADER then
        local value = var[lim.header_var]
        if value and value ~= "" then
            return "h:", value
        end
    elseif kind == KIND_CLAIM then
        local value = claims and claims[lim.claim]
        local vtype = type(value)
        if (vtype == "string" and value ~= "") or vtype == "number" then
            return "cl:", value
        end
    end
    return "ip:", nil
end

-- Read only when a key needs it: most limits of authenticated operations count by consumer.
local function client_addr()
    return var.remote_addr or ""
end

local function node_key(lim, consumer, claims)
    local fixed = lim.node_key
    if fixed then
        return fixed
    end
    local tag, value = key_source(lim, consumer, claims)
    return lim.node_prefix .. tag .. (value or client_addr())
end

-- The Redis hash tag (Cluster slot) of a limit for this request: a consumer's
-- plan limits and quota share `c:<consumer>`; claim and header values are
-- hashed so any value makes a short, brace-free tag.
local function fleet_tag(lim, consumer, claims)
    local fixed = lim.fixed_tag
    if fixed then
        return fixed
    end
    local tag, value = key_source(lim, consumer, claims)
    if not value then
        return "ip:" .. client_addr()
    elseif tag == "c:" then
        return "c:" .. value
    end
    return tag .. md5(tostring(value))
end

local function quota_node_key(quota, consumer)
    if consumer then
        return quota.node_prefix .. consumer
    end
    return quota.node_prefix .. "ip:" .. client_addr()
end

-- Node limits 1..upto were charged; take the charges back.
local function undo_node(entry, upto, quota_charged, consumer, claims)
    local node = entry.node
    for i = 1, upto do
        local lim = node[i]
        dict:incr(node_key(lim, consumer, claims), -lim.interval)
    end
    if quota_charged then
        dict:incr(quota_node_key(entry.quota, consumer), -1)
    end
end

local function set_vars(entry, lim, remaining, reset)
    if ietf then
        var.gw_rl_policy = entry_policy(entry)
        var.gw_rl = lim.rl_open .. remaining .. ";t=" .. reset
    end
    if legacy then
        var.gw_xrl_limit = lim.q
        var.gw_xrl_remaining = remaining
        var.gw_xrl_reset = reset
    end
    var.gw_limit = lim.name
    var.gw_limit_remaining = remaining
end

local function throttled(entry, lim, retry_ms)
    local retry_after = ceil(retry_ms / 1000 - EPS)
    if retry_after < 1 then
        retry_after = 1
    end
    set_vars(entry, lim, 0, retry_after)
    return 429, "throttled", { ["Retry-After"] = retry_after }
end

local function quota_exceeded(entry, quota, now_s)
    local retry_after = ceil(quota.end_s - now_s)
    if retry_after < 1 then
        retry_after = 1
    end
    set_vars(entry, quota, 0, retry_after)
    return 429, "quota_exceeded", { ["Retry-After"] = retry_after }
end

local function unavailable()
    return 503, "limit_unavailable", { ["Retry-After"] = 1 }
end

local function log_redis_error(err)
    -- gwc.redis already logs transport failures at a bounded rate; other
    -- errors (a script or server fault) are logged here, once per 10 s.
    if find(err, "^redis unavailable") then
        return
    end
    local now = ngx_now()
    if now - last_error_log >= 10 then
        last_error_log = now
        ngx_log(ngx_ERR, "gwc limits: redis script failed: ", err)
    end
end

-- The fleet limits of a request, grouped by hash tag (all in one group on
-- a standalone Redis, where one script may touch any key).
local function group_for(groups, by_tag, tag)
    local key = standalone and "" or tag
    local group = by_tag[key]
    if not group then
        group = { rates = {}, keys = {}, args = { "c", 0 } }
        by_tag[key] = group
        groups[#groups + 1] = group
    end
    return group
end

local function fleet_groups(entry, consumer, claims)
    local groups, by_tag = {}, {}
    local fleet = entry.fleet
    local quota = entry.quota
    if quota and not quota.fleet then
        quota = nil
    end
    for i = 1, #fleet do
        local lim = fleet[i]
        local tag = fleet_tag(lim, consumer, claims)
        local group = group_for(groups, by_tag, tag)
        local n = #group.rates + 1
        group.rates[n] = lim
        group.keys[n] = redis_open .. tag .. lim.redis_suffix
        local args = group.args
        args[2] = n
        args[#args + 1] = lim.redis_interval
        args[#args + 1] = lim.redis_tau
    end
    if quota then
        local tag = fleet_tag(quota, consumer, claims)
        local group = group_for(groups, by_tag, tag)
        group.keys[#group.rates + 1] = redis_open .. tag .. quota.redis_suffix
        group.quota = quota
        local args = group.args
        args[#args + 1] = quota.redis_limit
        args[#args + 1] = quota.redis_reset
    end
    return groups
end

local function undo_groups(groups, upto)
    for i = 1, upto do
        local group = groups[i]
        group.args[1] = "u"
        client:eval(script, group.keys, group.args)
    end
end

-- Returns nil when allowed. Reads remote_addr, gw_consumer and gw_plan;
-- claims are the verified JWT claims (for claim.<name> keys), or nil.
function _M.check(step, claims)
    local entry = step.base
    local consumer
    if step.plans then
        consumer = var.gw_consumer
        if consumer == "" then
            consumer = nil
        end
        local plan_name = var.gw_plan
        local plan
        if plan_name == nil or plan_name == "" then
            plan = default_plan
        else
            plan = plans[plan_name] or default_plan
            if not plan then
                return 403, "plan_unknown"
            end
        end
        if plan then
            entry = step.by_plan[plan.name]
        end
    elseif step.needs_consumer then
        consumer = var.gw_consumer
        if consumer == "" then
            consumer = nil
        end
    end
    if not entry then
        return nil
    end
    local now = now_ms()
    local now_s = now / 1000
    local quota = entry.quota
    -- Before any limit can refuse: the policy header lists the quota of the
    -- current period, even when a rate limit decides first in a fresh worker.
    if quota and (now_s >= quota.end_s or now_s < quota.start_s) then
        refresh_period(quota, now_s)
    end
    local deciding, best_remaining, best_reset, best_order = nil, huge, 0, huge

    local node = entry.node
    local n_node = entry.n_node
    for i = 1, n_node do
        local lim = node[i]
        local key = node_key(lim, consumer, claims)
        local interval = lim.interval
        -- Shared dicts have no compare-and-set, so the busy path charges
        -- first with one atomic incr (exact under any concurrency) and a
        -- refusal takes the charge back. Only an idle bucket (old < now)
        -- needs a second write to lift TAT to now + T; a worker charging
        -- the same key between our incr and set is overwritten, so on an
        -- idle->busy transition at most (workers - 1) extra requests can
        -- pass, once, before the bucket is busy and exact again.
        local tat = dict:incr(key, interval, now)
        if tat then
            local old = tat - interval
            if old < now then
                tat = now + interval
                dict:set(key, tat)
            elseif old - now > lim.tau then
                dict:incr(key, -interval)
                undo_node(entry, i - 1, false, consumer, claims)
                return throttled(entry, lim, old - lim.tau - now)
            end
            local remaining = floor((lim.tau + interval - (tat - now)) / interval + EPS)
            if remaining < best_remaining then
                deciding, best_remaining, best_order = lim, remaining, lim.order
                best_reset = ceil((tat - now) / 1000 - EPS)
            end
        end
        -- No tat: the dict refused even a forced write; fail open for this limit.
    end

    local quota_charged = false
    if quota then
        if not quota.fleet then
            local key = quota_node_key(quota, consumer)
            local used = dict:incr(key, 1, 0, quota.end_s - now_s + 60)
            if used then
                if used > quota.limit then
                    dict:incr(key, -1)
                    undo_node(entry, n_node, false, consumer, claims)
                    return quota_exceeded(entry, quota, now_s)
                end
                quota_charged = true
                local remaining = quota.limit - used
                if remaining < best_remaining then
                    deciding, best_remaining, best_order = quota, remaining, entry.quota_order
                    best_reset = ceil(quota.end_s - now_s)
                end
            end
        end
    end

    if client and (entry.fleet[1] or (quota and quota.fleet)) then
        local groups = fleet_groups(entry, consumer, claims)
        for g = 1, #groups do
            local group = groups[g]
            local res, err = client:eval(script, group.keys, group.args)
            if type(res) ~= "table" or type(res[1]) ~= "number" then
                log_redis_error(err or "unexpected reply")
                if deny_on_error then
                    undo_groups(groups, g - 1)
                    undo_node(entry, n_node, quota_charged, consumer, claims)
                    return unavailable()
                end
                break -- on_error allow: the remaining fleet limits do not apply
            end
            local refused = res[1]
            local rates = group.rates
            if refused ~= 0 then
                undo_groups(groups, g - 1)
                undo_node(entry, n_node, quota_charged, consumer, claims)
                local lim = rates[refused]
                if lim then
                    return throttled(entry, lim, tonumber(res[2]) or 0)
                end
                return quota_exceeded(entry, group.quota, now_s)
            end
            for i = 1, #rates do
                local lim = rates[i]
                local remaining = tonumber(res[2 * i])
                if remaining and (remaining < best_remaining
                        or (remaining == best_remaining and lim.order < best_order)) then
                    deciding, best_remaining, best_order = lim, remaining, lim.order
                    best_reset = tonumber(res[2 * i + 1]) or 0
                end
            end
            local gquota = group.quota
            if gquota then
                local remaining = tonumber(res[2 * #rates + 2])
                if remaining and (remaining < best_remaining
                        or (remaining == best_remaining and entry.quota_order < best_order)) then
                    deciding, best_remaining, best_order = gquota, remaining, entry.quota_order
                    best_reset = ceil(gquota.end_s - now_s)
                end
            end
        end
    end

    if deciding then
        set_vars(entry, deciding, best_remaining, best_reset)
    end
    return nil
end

return _M
