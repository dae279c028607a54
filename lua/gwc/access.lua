-- The access phase of operations with a policy: authentication, then the
-- external authorizer, then request validation. Only run() ends a request.
local auth = require "gwc.auth"
local authorizer = require "gwc.authorizer"
local problem = require "gwc.problem"
local router = require "gwc.router"

local ngx = ngx
local var = ngx.var
local exit = ngx.exit
local req_clear_header = ngx.req.clear_header
local req_set_header = ngx.req.set_header
local pairs = pairs
local type = type

local _M = { _VERSION = "0.1.0" }

local NO_CAPTURES = {}
local policies = {}
local forwarded = {}
local validation -- gwc.validation, when the build generated validators

-- data is access.json; runs in init_by_lua (the master), after auth.load.
function _M.load(data, validator_runtime)
    if type(data) ~= "table" or type(data.operations) ~= "table" then
        return nil, "missing operations"
    end
    local ok, err = auth.load(data.schemes)
    if not ok then
        return nil, err
    end
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
    if policy.validate and validation then
        local status, reason, errors = validation.check(op_id, policy.path_params and router.captures() or NO_CAPTURES)
        if status then
            return reject(status, reason, nil, errors and { "errors", errors } or nil)
        end
    end
end

return _M
