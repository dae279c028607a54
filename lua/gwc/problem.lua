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

local _M = { _VERSION = "0.1.0" }

local TITLES = {
    [400] = "Bad Request",
    [401] = "Unauthorized",
    [403] = "Forbidden",
    [404] = "Not Found",
    [405] = "Method Not Allowed",
    [408] = "Request Timeout",
    [413] = "Content Too Large",
    [414] = "URI Too Long",
    [415] = "Unsupported Media Type",
    [429] = "Too Many Requests",
    [500] = "Internal Server Error",
    [411] = "Length Required",
    [501] = "Not Implemented",
    [502] = "Bad Gateway",
    [503] = "Service Unavailable",
    [504] = "Gateway Timeout",
    [505] = "HTTP Version Not Supported",
}

local DETAILS = {
    [400] = "The request is malformed.",
    [404] = "No operation matches the request path.",
    [405] = "The operation does not allow this method.",
    [408] = "The client did not send the request in time.",
    [413] = "The request body is larger than the gateway accepts.",
    [414] = "The request URI is longer than the gateway accepts.",
    [500] = "The gateway failed to process the request.",
    [502] = "The upstream could not be reached or sent an invalid response.",
    [503] = "The upstream is unavailable.",
    [504] = "The upstream did not respond in time.",
    [411] = "The request needs a Content-Length.",
    [501] = "The gateway does not implement this request.",
    [505] = "The gateway speaks HTTP/1.0 and HTTP/1.1 only.",
}

local REASONS = {
    encoded_slash = "A backslash, or an encoded '/' or '\\', is not allowed in the request path.",
}

-- nginx's internal codes for request-header and TLS client-certificate
-- failures, which it reports to clients as 400.
local SPECIAL = {
    [494] = { 400, "The request headers are larger than the gateway accepts." },
    [495] = { 400, "The client certificate could not be verified." },
    [496] = { 400, "A client certificate is required." },
    [497] = { 400, "A plain HTTP request was sent to an HTTPS port." },
}

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
