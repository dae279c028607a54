-- External authorizer: an HTTP service decides, the gateway caches its answer.
--
-- The identity sources are sent as request headers (X-Gwc-Identity-<n>
-- would hide which is which, so each keeps its own name: header.X stays X,
-- query.x becomes X-Gwc-Query-x, cookie.x becomes X-Gwc-Cookie-x). 2xx allows,
-- 401/403 denies, anything else fails closed with 503.
local http_client = require "gwc.http_client"
local lrucache = require "resty.lrucache"

local ngx = ngx
local var = ngx.var
local unescape_uri = ngx.unescape_uri
local concat = table.concat
local lower = string.lower
local gsub = string.gsub
local sub = string.sub
local type = type
local ipairs = ipairs

local _M = { _VERSION = "0.1.0" }

local CACHE_SIZE = 10000
local MAX_BODY = 65536
-- Authorizer calls sit on the request path (every request when ttl is 0):
-- reuse connections rather than pay a handshake each time. Idle ones are
-- dropped after 4 s, before common server keep-alive timeouts (Node's is 5 s)
-- close them under us.
local KEEPALIVE = { timeout = 4000, size = 64 }

local cache -- per worker; created lazily because lrucache must not be shared with the master

local function cache_table()
    if not cache then
        cache = lrucache.new(CACHE_SIZE)
    end
    return cache
end

-- Precomputes the nginx variable and upstream header of each identity source.
function _M.compile(conf)
    local sources = {}
    for i, ident in ipairs(conf.identity or {}) do
        local kind, name = ident:match("^(%a+)%.(.+)$")
        if not kind then
            return nil, "bad identity source " .. tostring(ident)
        end
        local source = { kind = kind, name = name }
        if kind == "header" then
            source.var = "http_" .. gsub(lower(name), "-", "_")
            source.header = name
        elseif kind == "query" then
            source.var = "arg_" .. name
            source.header = "X-Gwc-Query-" .. name
        elseif kind == "cookie" then
            source.var = "cookie_" .. name
            source.header = "X-Gwc-Cookie-" .. name
        else
            return nil, "bad identity source " .. tostring(ident)
        end
        sources[i] = source
    end
    conf.sources = sources
    local forward = {}
    for i, name in ipairs(conf.forward_headers or {}) do
        forward[i] = { name = name, key = lower(name) }
    end
    conf.forward = forward
    return conf
end

-- Returns the headers to add upstream on allow, or nil, status, reason.
function _M.check(conf)
    local sources = conf.sources
    local parts = {}
    local any = false
    for i = 1, #sources do
        local source = sources[i]
        local value = var[source.var]
        if value and value ~= "" then
            if source.kind == "query" then
                value = unescape_uri(value)
            end
            any = true
            parts[i] = value
        else
            parts[i] = ""
        end
    end
    if not any then
        return nil, 401, "authorizer_identity_missing"
    end
    -- The identity values are joined with a byte that cannot occur in a
    -- header value, so two different identities never share a cache key.
    local key = conf.url .. "\0" .. concat(parts, "\0")
    local ttl = conf.ttl or 0
    if ttl > 0 then
        local hit = cache_table():get(key)
        if hit then
            if hit.allow then
                return hit.headers
            end
            return nil, hit.status, "authorizer_denied"
        end
    end
    local headers = {}
    for i = 1, #sources do
        if parts[i] ~= "" then
            headers[sources[i].header] = parts[i]
        end
    end
    headers["X-Request-Id"] = var.gw_request_id
    headers["X-Forwarded-Method"] = ngx.req.get_method()
    headers["X-Forwarded-Uri"] = var.request_uri
    local res, err = http_client.request({
        method = "GET",
        url = conf.url,
        headers = headers,
        timeout = conf.timeout,
        max_body = MAX_BODY,
        keepalive = KEEPALIVE,
    })
    if not res then
        ngx.log(ngx.WARN, "gwc: authorizer ", conf.url, " failed: ", err)
        return nil, 503, "authorizer_unavailable"
    end
    local status = res.status
    local entry
    if status >= 200 and status < 300 then
        local forward = {}
        local fwd = conf.forward
        for i = 1, #fwd do
            local value = res.headers[fwd[i].key]
            if type(value) == "table" then
                value = value[1]
            end
            if value then
                forward[fwd[i].name] = sub(value, 1, 8192)
            end
        end
        entry = { allow = true, headers = forward }
    elseif status == 401 or status == 403 then
        entry = { allow = false, status = status }
    else
        ngx.log(ngx.WARN, "gwc: authorizer ", conf.url, " answered ", status)
        return nil, 503, "authorizer_unavailable"
    end
    if ttl > 0 then
        cache_table():set(key, entry, ttl)
    end
    if entry.allow then
        return entry.headers
    end
    return nil, entry.status, "authorizer_denied"
end

return _M
