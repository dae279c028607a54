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
local TITLES, DETAILS, REASONS, SPECIAL, TYPES = {}, {}, {}, {}, {}

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
    TYPES = data.types or {}
    return true
end

local function request_path()
    local raw = var.request_uri or ""
    local query = find(raw, "?", 1, true)
    return query and sub(raw, 1, query - 1) or raw
end

local function body_of(status, detail, extra, reason)
    -- Assembled by hand for a stable member order; cjson escapes "/" needlessly.
    local parts = '{"type":' .. encode(reason and TYPES[reason] or "about:blank")
        .. ',"title":' .. encode(TITLES[status] or "Error")
        .. ',"status":' .. status
        .. ',"detail":' .. encode(detail or "")
        .. ',"instance":' .. encode(request_path())
        .. ',"request_id":' .. encode(var.gw_request_id or "")
    if extra then
        for i = 1, #extra, 2 do
            local value = encode(extra[i + 1])
            if value then
                parts = parts .. ',' .. encode(extra[i]) .. ':' .. value
            end
        end
    end
    return (gsub(parts .. "}", "\\/", "/"))
end

local function emit(status, body)
    ngx.status = status
    header["Content-Type"] = "application/problem+json"
    header["Cache-Control"] = "no-store"
    header["Content-Length"] = #body
    ngx.print(body)
end

-- nginx refuses a client certificate that is revoked, expired or not yet
-- valid before routing (its 495, which error_page turns into a 400); an
-- untrusted one it lets through (optional_no_ca) for the operations to judge.
local function client_certificate_refused()
    local verdict = var.ssl_client_verify
    return verdict ~= nil and sub(verdict, 1, 7) == "FAILED:"
        and (find(verdict, "revoked", 8, true) or find(verdict, "expired", 8, true)
             or find(verdict, "not yet valid", 8, true)) ~= nil
end

-- From error_page: status is the one nginx is about to send.
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
    if (not reason or reason == "") and status == 400 and client_certificate_refused() then
        reason = "mtls_unverified"
        var.gw_problem = reason
    end
    if (not reason or reason == "") and status == 403 and var.gw_waf == "1" then
        -- ModSecurity refused it in a WAF location (docs/waf.md): WAF_FILTERED.
        reason = "waf_filtered"
        var.gw_problem = reason
    end
    if (not reason or reason == "") and status == 429 then
        -- nginx's own limit_req refused it; the location says how long one token takes.
        reason = "throttled"
        var.gw_problem = reason
        local wait = var.gw_retry_after
        if wait and wait ~= "" then
            header["Retry-After"] = wait
        end
    end
    if reason and reason ~= "" then
        detail = REASONS[reason]
    else
        reason = nil
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
    emit(status, body_of(status, detail, nil, reason))
end

-- A WAF location sends 403 without error_page (an internal redirect would
-- drop ModSecurity's transaction before it writes its record of the request),
-- so nginx's built-in page is replaced here by the problem /_gwc/error would
-- send: WAF_FILTERED for ModSecurity's refusal, the location's own reason
-- (ip_denied) otherwise. Lua's own refusals are problem+json already.
function _M.refusal_header()
    if ngx.status ~= 403 or header["Content-Type"] == "application/problem+json" then
        return
    end
    local upstream = var.upstream_status
    if upstream and upstream ~= "" then
        return  -- the backend's own 403
    end
    local reason = var.gw_problem
    if not reason or reason == "" then
        reason = "waf_filtered"
        var.gw_problem = reason
    end
    local body = body_of(403, REASONS[reason] or DETAILS[403], nil, reason)
    ngx.ctx.gw_refusal = body
    header["Content-Type"] = "application/problem+json"
    header["Cache-Control"] = "no-store"
    header["Content-Length"] = #body
end

function _M.refusal_body()
    if ngx.status ~= 403 then
        return
    end
    local ctx = ngx.ctx
    local body = ctx.gw_refusal
    if body == nil then
        return
    end
    if body then
        ngx.arg[1] = body
        ngx.arg[2] = true
        ctx.gw_refusal = false
    else
        ngx.arg[1] = nil
    end
end

-- A rejection decided in Lua (auth, validation), sent from the current phase.
-- reason is a stable code from the catalogue: it picks the detail and is
-- logged as $gw_problem. extra is a flat list of member names and values
-- appended to the body ({"errors", {...}}); headers a map of response headers.
-- The caller's phase handler ends the request with ngx.exit(status).
function _M.send(status, reason, extra, headers)
    if reason then
        var.gw_problem = reason
    end
    if headers then
        for name, value in pairs(headers) do
            header[name] = value
        end
    end
    emit(status, body_of(status, reason and REASONS[reason] or DETAILS[status], extra, reason))
end

return _M
