-- A minimal HTTP/1.1 client over cosockets, for the gateway's own outbound
-- calls (JWKS and discovery documents, external authorizers).
--
-- One request per connection (Connection: close): these calls are rare, and
-- a pool would have to be keyed by TLS verification settings as well.
local ngx = ngx
local tcp = ngx.socket.tcp
local find = string.find
local sub = string.sub
local lower = string.lower
local match = string.match
local upper = string.upper
local concat = table.concat
local tonumber = tonumber
local tostring = tostring
local type = type
local pairs = pairs

local _M = { _VERSION = "0.1.0" }

local DEFAULT_TIMEOUT = 5000
local DEFAULT_MAX_BODY = 1024 * 1024
local CHUNK = 16384

-- scheme://host[:port][/path][?query]; host may be a bracketed IPv6 literal.
local function parse_url(url)
    local scheme, rest = match(url, "^(https?)://(.+)$")
    if not scheme then
        return nil, "unsupported URL: " .. url
    end
    local authority, path = match(rest, "^([^/?#]+)(.*)$")
    if not authority then
        return nil, "URL without host"
    end
    path = match(path, "^[^#]*")
    if path == "" then
        path = "/"
    elseif sub(path, 1, 1) == "?" then
        path = "/" .. path
    end
    if find(authority, "@", 1, true) then
        return nil, "credentials in URL are not supported"
    end
    local host, port = match(authority, "^%[([^%]]+)%]:?(%d*)$")
    if not host then
        host, port = match(authority, "^([^:]+):?(%d*)$")
    end
    if not host then
        return nil, "bad host in URL"
    end
    local default_port = scheme == "https" and 443 or 80
    port = tonumber(port) or default_port
    if port < 1 or port > 65535 then
        return nil, "bad port in URL"
    end
    local host_header = authority
    if port == default_port then
        host_header = match(authority, "^(.-):?%d*$")
    end
    return { scheme = scheme, host = host, port = port, path = path, host_header = host_header }
end
_M.parse_url = parse_url

local function unsafe(s)
    return find(s, "[\r\n%z]") ~= nil
end

local function read_headers(sock)
    local line, err = sock:receive("*l")
    if not line then
        return nil, "reading status line: " .. tostring(err)
    end
    local minor, code = match(line, "^HTTP/1%.([01]) (%d%d%d)")
    local status = tonumber(code)
    if not status then
        return nil, "bad status line"
    end
    local headers, count = {}, 0
    while true do
        line, err = sock:receive("*l")
        if not line then
            return nil, "reading headers: " .. tostring(err)
        end
        if line == "" then
            break
        end
        count = count + 1
        if count > 100 then
            return nil, "too many response headers"
        end
        local name, value = match(line, "^([^:%s]+)%s*:%s*(.-)%s*$")
        if name then
            name = lower(name)
            local prev = headers[name]
            headers[name] = prev and (prev .. ", " .. value) or value
        end
    end
    return status, headers, minor == "1"
end

local function read_chunked(sock, max_body)
    local parts, n, total = {}, 0, 0
    while true do
        local line, err = sock:receive("*l")
        if not line then
            return nil, "reading chunk size: " .. tostring(err)
        end
        local size = tonumber(match(line, "^%s*(%x+)"), 16)
        if not size then
            return nil, "bad chunk size"
        end
        if size == 0 then
            -- Trailer fields, up to the empty line.
            repeat
                line, err = sock:receive("*l")
                if not line then
                    return nil, "reading trailer: " .. tostring(err)
                end
            until line == ""
            return concat(parts, "", 1, n)
        end
        total = total + size
        if total > max_body then
            return nil, "response body too large"
        end
        local data
        data, err = sock:receive(size)
        if not data then
            return nil, "reading chunk: " .. tostring(err)
        end
        n = n + 1
        parts[n] = data
        data, err = sock:receive(2)
        if data ~= "\r\n" then
            return nil, "bad chunk terminator"
        end
    end
end

local function read_to_close(sock, max_body)
    local parts, n, total = {}, 0, 0
    while true do
        local data, err, partial = sock:receive(CHUNK)
        data = data or partial
        if data and #data > 0 then
            total = total + #data
            if total > max_body then
                return nil, "response body too large"
            end
            n = n + 1
            parts[n] = data
        end
        if err == "closed" then
            return concat(parts, "", 1, n)
        elseif err then
            return nil, "reading body: " .. err
        end
    end
end

-- One request on one connection. The third result says the failure came
-- from a reused pooled connection before any response: worth a fresh retry.
local function exchange(u, method, req, opts, verify, keepalive, timeout, max_body)
    local sock = tcp()
    sock:settimeouts(timeout, timeout, timeout)
    local ok, err
    if keepalive then
        -- A pooled TLS connection was verified with these exact settings.
        ok, err = sock:connect(u.host, u.port, {
            pool = concat({ u.scheme, u.host, u.port, opts.server_name or u.host, tostring(verify) }, ":"),
        })
    else
        ok, err = sock:connect(u.host, u.port)
    end
    if not ok then
        return nil, "connect to " .. u.host .. ":" .. u.port .. ": " .. tostring(err)
    end
    local reused = keepalive and (sock:getreusedtimes() or 0) > 0
    if u.scheme == "https" and not reused then
        -- false, not nil: with nil, resty.core returns the session, which is
        -- nil when the server sent none, or asserts when ngx_lua 0.10.23
        -- checked the certificate only after a handshake that did not yield.
        -- With false it returns true, and a socket that failed verification
        -- afterwards is already closed, which getreusedtimes() reveals.
        ok, err = sock:sslhandshake(false, opts.server_name or u.host, verify)
        if ok and not sock:getreusedtimes() then
            ok, err = nil, "certificate verification failed"
        end
        if not ok then
            sock:close()
            return nil, "TLS handshake with " .. u.host .. ": " .. tostring(err)
        end
    end
    ok, err = sock:send(req)
    if not ok then
        sock:close()
        return nil, "send: " .. tostring(err), reused
    end

    local status, headers, http11 = read_headers(sock)
    if not status then
        sock:close()
        return nil, headers, reused
    end
    local res_body = ""
    local reusable = keepalive and http11 and not find(lower(headers["connection"] or ""), "close", 1, true)
    if method ~= "HEAD" and status ~= 204 and status ~= 304 and status >= 200 then
        local te = headers["transfer-encoding"]
        local cl = headers["content-length"]
        if te and find(lower(te), "chunked", 1, true) then
            res_body, err = read_chunked(sock, max_body)
        elseif cl then
            local len = tonumber(cl)
            if not len or len < 0 or find(cl, "[^%d]") then
                err = "bad Content-Length"
            elseif len > max_body then
                err = "response body too large"
            elseif len > 0 then
                res_body, err = sock:receive(len)
                if not res_body then
                    err = "reading body: " .. tostring(err)
                end
            end
        else
            reusable = false
            res_body, err = read_to_close(sock, max_body)
        end
    end
    if reusable and not err then
        sock:setkeepalive(keepalive.timeout or 60000, keepalive.size or 32)
    else
        sock:close()
    end
    if err then
        return nil, err
    end
    return { status = status, headers = headers, body = res_body }
end

-- opts: method (GET), url, headers (map), body (string), timeout (ms, for
-- connect, each send and each receive), max_body (bytes), ssl_verify
-- (default true; needs lua_ssl_trusted_certificate), server_name (SNI,
-- default the URL host), keepalive ({ timeout = ms, size = n }: reuse
-- connections from a per-worker pool, for callers on the request path such
-- as the external authorizer).
-- Returns { status, headers (lower-cased names), body } or nil, err.
function _M.request(opts)
    if type(opts) ~= "table" or type(opts.url) ~= "string" then
        return nil, "url required"
    end
    local u, err = parse_url(opts.url)
    if not u then
        return nil, err
    end
    local method = upper(opts.method or "GET")
    if not match(method, "^%u+$") or unsafe(u.path) or find(u.path, " ", 1, true) then
        return nil, "bad method or path"
    end
    local timeout = opts.timeout or DEFAULT_TIMEOUT
    local max_body = opts.max_body or DEFAULT_MAX_BODY
    local body = opts.body

    local req = { method, " ", u.path, " HTTP/1.1\r\nHost: ", u.host_header, "\r\n" }
    local have = {}
    if opts.headers then
        for name, value in pairs(opts.headers) do
            name, value = tostring(name), tostring(value)
            if unsafe(name) or unsafe(value) or find(name, "[:%s]") then
                return nil, "bad request header " .. name
            end
            have[lower(name)] = true
            req[#req + 1] = name .. ": " .. value .. "\r\n"
        end
    end
    if not have["user-agent"] then
        req[#req + 1] = "User-Agent: gwc/" .. _M._VERSION .. "\r\n"
    end
    if not have["accept"] then
        req[#req + 1] = "Accept: */*\r\n"
    end
    if body then
        req[#req + 1] = "Content-Length: " .. #body .. "\r\n"
    end
    local keepalive = opts.keepalive
    req[#req + 1] = keepalive and "Connection: keep-alive\r\n\r\n" or "Connection: close\r\n\r\n"
    if body then
        req[#req + 1] = body
    end

    local verify = opts.ssl_verify
    if verify == nil then
        verify = true
    end
    local res, stale
    res, err, stale = exchange(u, method, req, opts, verify, keepalive, timeout, max_body)
    if not res and stale then
        -- A pooled connection the server had already closed: once more, on
        -- a new connection outside the pool (closed afterwards).
        res, err = exchange(u, method, req, opts, verify, nil, timeout, max_body)
    end
    return res, err
end

return _M
