-- RFC 9457 problem+json responses for every error the gateway itself produces.
local cjson = require "cjson.safe"
local router = require "gwc.router"

local ngx = ngx
local var = ngx.var
local header = ngx.header
local find = string.find
local sub = string.sub
local gsub = string.gsub
local encode = cjson.encode
local unescape_uri = ngx.unescape_uri
local pairs = pairs
local tonumber = tonumber
local type = type

local _M = { _VERSION = "0.1.0" }

-- Filled from lua/gwc/data/problems.json (compiler/gwc/problems.py) at init.
local TITLES, DETAILS, REASONS, SPECIAL = {}, {}, {}, {}

local function by_status(map)
    local out = {}
    for k, v in pairs(map or {}) do
        out[tonumber(k)] = v
    end
    return out
end

function _M.load(data)
    if type(data) ~= "table" or type(data.titles) ~= "table" then
        return nil, "missing titles"
    end
    TITLES = by_status(data.titles)
    DETAILS = by_status(data.details)
    REASONS = data.reasons or {}
    SPECIAL = by_status(data.special)
    return true
end

local function request_path()
    local raw = var.request_uri or ""
    local query = find(raw, "?", 1, true)
    return query and sub(raw, 1, query - 1) or raw
end

-- status is given for the gateway's own rejections; from error_page it is the
-- status nginx is about to send.
function _M.respond(status)
    status = status or ngx.status
    local detail
    local special = SPECIAL[status]
    if special then
        status, detail = special[1], special[2]
    elseif not TITLES[status] then
        status = status and status >= 400 and status < 600 and status or 500
    end
    local reason = var.gw_problem
    if reason and reason ~= "" then
        detail = REASONS[reason]
    end
    detail = detail or DETAILS[status]
    if status == 405 then
        local allow = var.gw_allow
        if not allow or allow == "" then
            -- nginx refuses some methods (TRACE) before the router runs.
            allow = router.allowed_methods(unescape_uri(request_path()))
        end
        if allow then
            header["Allow"] = allow
            detail = "Allowed methods: " .. allow .. "."
        end
    end
    -- Assembled by hand for a stable member order; cjson escapes "/" needlessly.
    local body = gsub('{"type":"about:blank","title":' .. encode(TITLES[status] or "Error")
        .. ',"status":' .. status
        .. ',"detail":' .. encode(detail or "")
        .. ',"instance":' .. encode(request_path())
        .. ',"request_id":' .. encode(var.gw_request_id or "") .. "}", "\\/", "/")
    ngx.status = status
    header["Content-Type"] = "application/problem+json"
    header["Cache-Control"] = "no-store"
    header["Content-Length"] = #body
    ngx.print(body)
end

return _M
