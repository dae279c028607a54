-- The access phase of operations with a policy: authentication, then the
-- external authorizer, then rate limits and quotas, then request validation.
-- Only run() ends a request.
local auth = require "gwc.auth"
local authorizer = require "gwc.authorizer"
local limits = require "gwc.limits"
local problem = require "gwc.problem"
local router = require "gwc.router"

local ngx = ngx
local var = ngx.var
local exit = ngx.exit
local req_clear_header = ngx.req.clear_header
local req_set_header = ngx.req.set_header
local ipairs = ipairs
local pairs = pairs
local type = type

local _M = { _VERSION = "0.1.0" }

local NO_CAPTURES = {}
local policies = {}
local forwarded = {}
local validation -- gwc.validation, when the build generated validators

-- The Redis client fleet-scope limits share; its password comes from the
-- master's environment (`env NAME;` in nginx.conf), never from the output.
local function redis_client(conf)
    local password
    if conf.password_env then
        password = os.getenv(conf.password_env)
        if not password or password == "" then
            return nil, "redis: environment variable " .. conf.password_env .. " is not set (nginx.conf needs `env "
                .. conf.password_env .. ";`)"
        end
    end
    return require("gwc.redis").new({
        url = conf.url, cluster = conf.cluster, password = password, timeout = conf.timeout, pool = conf.pool,
        ssl_verify = conf.ssl_verify, server_name = conf.server_name, name = "limits",
    })
end

local function uses_claims(data)
    for _, entry in pairs(data.operations) do
        for _, limit in ipairs(type(entry.limits) == "table" and entry.limits or {}) do
            if limit.key == "claim" then
                return true
            end
        end
    end
    return false
end

-- data is access.json; runs in init_by_lua (the master), after auth.load.
function _M.load(data, validator_runtime)
    if type(data) ~= "table" or type(data.operations) ~= "table" then
        return nil, "missing operations"
    end
    local ok, err = auth.load(data.schemes)
    if not ok then
        return nil, err
    end
    local traffic = data.traffic
    if traffic ~= nil then
        local client
        if type(traffic) == "table" and type(traffic.redis) == "table" then
            client, err = redis_client(traffic.redis)
            if not client then
                return nil, err
            end
        end
        ok, err = limits.configure(traffic, client)
        if not ok then
            return nil, "traffic: " .. err
        end
    end
    auth.keep_claims(uses_claims(data))
    local out = {}
    for op_id, entry in pairs(data.operations) do
        local policy = {
            validate = entry.validate == true,
            -- Only operations with path parameters need the router to recover them.
            path_params = type(entry.path_params) == "table" and entry.path_params[1] ~= nil,
        }
        if type(entry.requirements) == "table" and entry.requirements[1] then
            policy.auth, err = auth.compile(entry.requirements)
            if not policy.auth then
                return nil, "operation " .. op_id .. ": " .. err
            end
        end
        if entry.limits ~= nil or entry.plans then
            if traffic == nil then
                return nil, "operation " .. op_id .. ": limits without traffic settings"
            end
            policy.limits, err = limits.compile(op_id, entry)
            if err then
                return nil, "operation " .. op_id .. ": " .. err
            end
        end
        if type(entry.authorizer) == "table" then
            policy.authorizer, err = authorizer.compile(entry.authorizer)
            if not policy.authorizer then
                return nil, "operation " .. op_id .. ": " .. err
            end
        end
        out[op_id] = policy
    end
    policies = out
    forwarded = data.forward_headers or {}
    validation = validator_runtime
    return true
end

local function reject(status, reason, challenge, extra)
    local headers
    if challenge then
        headers = { ["WWW-Authenticate"] = challenge }
    end
    problem.send(status, reason, extra, headers)
    return exit(status)
end

function _M.run()
    local op_id = var.gw_op
    local policy = policies[op_id]
    if not policy then
        return
    end
    -- Headers only the gateway may set upstream never pass from a client,
    -- whether or not this request ends up setting them.
    for i = 1, #forwarded do
        req_clear_header(forwarded[i])
    end
    local checker = policy.auth
    if checker then
        local status, reason, challenge = auth.check(checker)
        if status then
            return reject(status, reason, challenge)
        end
    end
    local authz = policy.authorizer
    if authz then
        local headers, status, reason = authorizer.check(authz)
        if not headers then
            return reject(status, reason)
        end
        for name, value in pairs(headers) do
            req_set_header(name, value)
        end
    end
    local limit = policy.limits
    if limit then
        local status, reason, headers = limits.check(limit, auth.claims())
        if status then
            problem.send(status, reason, nil, headers)
            return exit(status)
        end
    end
    if policy.validate and validation then
        local status, reason, errors = validation.check(op_id, policy.path_params and router.captures() or NO_CAPTURES)
        if status then
            return reject(status, reason, nil, errors and { "errors", errors } or nil)
        end
    end
end

return _M
