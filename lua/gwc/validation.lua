-- Request validation: runtime helpers for the validators that gwc generates
-- (lua/gwc/data/validators.lua, compiled from the spec's schemas), and the
-- request-level entry point called from the access phase.
--
-- check() never exits and never throws: a runtime error inside a validator
-- becomes a 400, so a bad request can never turn into a 500 or a log line.
local json = require "gwc.json_decode"

local ngx = ngx
local var = ngx.var
local re_find_ = ngx.re.find
local decode_args = ngx.decode_args
local get_uri_args = ngx.req.get_uri_args
local get_headers = ngx.req.get_headers
local read_body = ngx.req.read_body
local get_body_data = ngx.req.get_body_data
local get_body_file = ngx.req.get_body_file
local io_open = io.open
local byte = string.byte
local find = string.find
local sub = string.sub
local gsub = string.gsub
local lower = string.lower
local match = string.match
local gmatch = string.gmatch
local concat = table.concat
local sort = table.sort
local fmod = math.fmod
local floor = math.floor
local abs = math.abs
local huge = math.huge
local type = type
local pairs = pairs
local pcall = pcall
local tonumber = tonumber
local tostring = tostring
local getmetatable = getmetatable
local setmetatable = setmetatable

local _M = { _VERSION = "0.1.0" }

local OBJ, ARR, NUMBOX, NULL = json.OBJ, json.ARR, json.NUMBOX, json.null
local ALL = {} -- key of an evaluated-set meaning "every array item"

-- Path tokens of the value being validated (P[1..d]); errors build their
-- pointer from it, so valid requests never concatenate strings.
local P = {}
-- Per-request error state. check() never yields while validating.
local S = { n = 0, max = 10, full = false, errs = nil }

local function escape_token(t)
    if type(t) == "number" then
        return tostring(t - 1) -- Lua arrays are 1-based, JSON pointers 0-based
    end
    t = tostring(t)
    if find(t, "[~/]") then
        t = gsub(gsub(t, "~", "~0"), "/", "~1")
    end
    return t
end

local function pointer(d, extra)
    local parts = {}
    for i = 1, d do
        parts[i] = escape_token(P[i])
    end
    if extra ~= nil then
        parts[d + 1] = escape_token(extra)
    end
    if #parts == 0 then
        return ""
    end
    return "/" .. concat(parts, "/")
end

-- Records one error; returns true once the cap is reached (callers stop).
local function err(d, keyword, message, extra)
    local n = S.n + 1
    S.n = n
    local errs = S.errs
    if not errs then
        errs = {}
        S.errs = errs
    end
    errs[n] = { pointer = pointer(d, extra), keyword = keyword, message = message }
    if n >= S.max then
        S.full = true
        return true
    end
    return false
end

local function unbox(v)
    if getmetatable(v) == NUMBOX then
        return v[1]
    end
    return v
end

local function equal(a, b)
    a, b = unbox(a), unbox(b)
    if a == b then
        return true
    end
    local ma, mb = getmetatable(a), getmetatable(b)
    if ma ~= mb or (ma ~= OBJ and ma ~= ARR) then
        return false
    end
    local n = #a
    if n ~= #b then
        return false
    end
    if ma == ARR then
        for i = 1, n do
            if not equal(a[i], b[i]) then
                return false
            end
        end
        return true
    end
    for i = 1, n do
        local k = a[i]
        local bv = b[k]
        if bv == nil or not equal(a[k], bv) then
            return false
        end
    end
    return true
end

local function unique(arr)
    local n = #arr
    local seen
    local tables
    for i = 1, n do
        local v = unbox(arr[i])
        if type(v) == "table" then
            tables = tables or {}
            for j = 1, #tables do
                if equal(tables[j], v) then
                    return false
                end
            end
            tables[#tables + 1] = v
        else
            seen = seen or {}
            if seen[v] then
                return false
            end
            seen[v] = true
        end
    end
    return true
end

local function merge(dst, src)
    for k in pairs(src) do
        dst[k] = true
    end
end

local function multiple_of(n, m)
    local q = n / m
    if q ~= huge and q ~= -huge and abs(q) > 9007199254740992 then
        return true -- every double this large is integral: precision is gone
    end
    if q == huge or q == -huge then
        -- The quotient lost its fraction: decide with the remainder.
        local r = abs(fmod(n, m))
        return r == 0 or r < 1e-9 * abs(m) or abs(m) - r < 1e-9 * abs(m)
    end
    return abs(q - floor(q + 0.5)) < 1e-9
end

-- Code points, not bytes (the decoder already rejected invalid UTF-8).
local function utf8_len(s)
    local n = 0
    for i = 1, #s do
        local b = byte(s, i)
        if b < 0x80 or b >= 0xC0 then
            n = n + 1
        end
    end
    return n
end

-- Patterns were translated from ECMA-262 to PCRE at build time; a subject
-- that is not valid UTF-8 (or that hits the match limit) does not match.
local function re_find(s, pattern, opts)
    local from = re_find_(s, pattern, opts)
    return from ~= nil
end

-- Formats ------------------------------------------------------------------

local DAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

local function valid_date(y, m, d)
    y, m, d = tonumber(y), tonumber(m), tonumber(d)
    if m < 1 or m > 12 or d < 1 then
        return false
    end
    local max = DAYS[m]
    if m == 2 and y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) then
        max = 29
    end
    return d <= max
end

local function date(s)
    local y, m, d = match(s, "^(%d%d%d%d)%-(%d%d)%-(%d%d)$")
    return y ~= nil and valid_date(y, m, d)
end

local function time(s)
    local h, mi, se, rest = match(s, "^(%d%d):(%d%d):(%d%d)(.*)$")
    if not h then
        return false
    end
    local frac_end = match(rest, "^%.%d+()")
    if frac_end then
        rest = sub(rest, frac_end)
    end
    local oh, om = 0, 0
    local sign = 1
    if rest == "Z" or rest == "z" then
        oh, om = 0, 0
    else
        local sg, a, b = match(rest, "^([+-])(%d%d):(%d%d)$")
        if not sg then
            return false
        end
        oh, om = tonumber(a), tonumber(b)
        if oh > 23 or om > 59 then
            return false
        end
        sign = sg == "-" and -1 or 1
    end
    h, mi, se = tonumber(h), tonumber(mi), tonumber(se)
    if h > 23 or mi > 59 or se > 60 then
        return false
    end
    if se == 60 then
        -- A leap second exists only at 23:59:60 UTC.
        local utc = (h * 60 + mi - sign * (oh * 60 + om)) % 1440
        return utc == 23 * 60 + 59
    end
    return true
end

local function date_time(s)
    local dpart, sep, tpart = match(s, "^(%d%d%d%d%-%d%d%-%d%d)([Tt])(.+)$")
    return dpart ~= nil and date(dpart) and time(tpart)
end

local function octet(part)
    return #part <= 3 and not (#part > 1 and byte(part) == 48) and tonumber(part) <= 255
end

-- Dotted quad; leading zeros are refused (some parsers read them as octal).
local function ipv4(s)
    local a, b, c, d = match(s, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    return a ~= nil and octet(a) and octet(b) and octet(c) and octet(d)
end

local function ipv6(s)
    if #s < 2 or #s > 45 or find(s, "[^%x:%.]") then
        return false
    end
    local groups = 0
    local head, tail = s, nil
    local dc = find(s, "::", 1, true)
    if dc then
        if find(s, "::", dc + 1, true) then
            return false
        end
        head, tail = sub(s, 1, dc - 1), sub(s, dc + 2)
    end
    local function count(part, last)
        if part == "" then
            return 0
        end
        local n = 0
        local pieces = {}
        for piece in gmatch(part .. ":", "([^:]*):") do
            pieces[#pieces + 1] = piece
        end
        for i, piece in pairs(pieces) do
            if find(piece, ".", 1, true) then
                if not (last and i == #pieces and ipv4(piece)) then
                    return nil
                end
                n = n + 2
            elseif not match(piece, "^%x%x?%x?%x?$") then
                return nil
            else
                n = n + 1
            end
        end
        return n
    end
    local h = count(head, tail == nil)
    if not h then
        return false
    end
    if tail == nil then
        return h == 8
    end
    local t = count(tail, true)
    if not t then
        return false
    end
    return h + t <= 7
end

local function hostname(s)
    if #s == 0 or #s > 253 then
        return false
    end
    for label in gmatch(s .. ".", "([^.]*)%.") do
        if #label == 0 or #label > 63 or find(label, "[^%w%-]") or byte(label) == 45 or byte(label, -1) == 45 then
            return false
        end
        if sub(label, 3, 4) == "--" and lower(sub(label, 1, 2)) ~= "xn" then
            return false
        end
    end
    return true
end

-- The common shapes are single PCRE (JIT) matches: Lua patterns are not
-- compiled by LuaJIT, and a URI checked with them costs ~2 us. Address
-- literals in brackets are rare and checked in Lua afterwards.
local EMAIL = [[^(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*]]
    .. [[|"(?:[^"\\\r\n]|\\[^\r\n])*")@(?:([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?]]
    .. [[(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)|\[([^\[\]\\]+)\])\z]]

local function email(s)
    local at = find(s, "@", 1, true)
    if not at or at > 65 or #s > 320 then
        return false
    end
    if not re_find_(s, EMAIL, "jo") then
        return false
    end
    if byte(s, -1) ~= 93 then -- "]"
        return true
    end
    local lit = match(s, "@%[(.*)%]$")
    if not lit then
        return false
    end
    local v6 = match(lit, "^IPv6:(.*)$")
    if v6 then
        return ipv6(v6)
    end
    return ipv4(lit)
end

local function uuid(s)
    return #s == 36 and re_find_(s, [[^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\z]], "jo") ~= nil
end

-- RFC 3986 URI (scheme required): characters, percent-encodings, authority shape.
local PCHAR = [[(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})]]
local URI = [[^[A-Za-z][A-Za-z0-9+.\-]*:]]
    .. [[(?://(?:(?:[A-Za-z0-9\-._~!$&'()*+,;=:]|%[0-9A-Fa-f]{2})*@)?]]
    .. [[(?:\[[0-9A-Za-z:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?(?=[/?#]|\z))?]]
    .. [[(?:/|]] .. PCHAR .. [[)*(?:\?(?:[/?]|]] .. PCHAR .. [[)*)?(?:#(?:[/?]|]] .. PCHAR .. [[)*)?\z]]

local function uri(s)
    if not re_find_(s, URI, "jo") then
        return false
    end
    local lit = find(s, "[", 1, true) and match(s, "^[^:]*://[^/?#]-%[([^%]]*)%]")
    if lit then
        return ipv6(lit) or match(lit, "^[vV]%x+%.[%w%-%._~!%$&'%(%)%*%+,;=:]+$") ~= nil
    end
    return true
end

local function base64(s)
    return #s % 4 == 0 and find(s, "^[%w%+/]*=?=?$") ~= nil and not find(s, "=[^=]")
end

local FMT = {
    ["date-time"] = date_time,
    date = date,
    time = time,
    email = email,
    uuid = uuid,
    ipv4 = ipv4,
    ipv6 = ipv6,
    uri = uri,
    hostname = hostname,
    byte = base64,
}

-- What generated modules bind as upvalues.
_M.rt = {
    OBJ = OBJ, ARR = ARR, NUMBOX = NUMBOX, NULL = NULL, ALL = ALL,
    P = P, S = S, err = err, equal = equal, unique = unique, merge = merge,
    multiple_of = multiple_of, utf8_len = utf8_len, re_find = re_find, FMT = FMT,
}
_M.decode = json.decode

-- Parameters -----------------------------------------------------------------

local DELIM = { form = ",", simple = ",", spaceDelimited = " ", pipeDelimited = "|" }

local function number_of(s)
    -- JSON number grammar only: tonumber would also take "0x10", " 5", "inf".
    if find(s, "^%-?%d+%.?%d*[eE]?[%+%-]?%d*$") and find(s, "^%-?%d") then
        if find(s, "^%-?0%d") then
            return nil
        end
        return tonumber(s)
    end
    return nil
end

-- kind: "integer" | "number" | "boolean" | "string" | "null" | nil (keep the string)
local function coerce(s, kind)
    if type(s) ~= "string" then
        s = ""
    end
    if kind == "integer" or kind == "number" then
        local n = number_of(s)
        if n ~= nil then
            return n
        end
    elseif kind == "boolean" then
        if s == "true" then
            return true
        elseif s == "false" then
            return false
        end
    end
    return s
end

local function split(s, delim)
    local out = setmetatable({}, ARR)
    if s == "" then
        return out
    end
    local n, start = 0, 1
    while true do
        local at = find(s, delim, start, true)
        n = n + 1
        if not at then
            out[n] = sub(s, start)
            return out
        end
        out[n] = sub(s, start, at - 1)
        start = at + 1
    end
end

-- raw: a string, or a list of strings for a repeated query key / header.
-- spec: { array = bool, kind = item or scalar kind, style = ..., explode = bool }
local function param_value(raw, spec)
    if spec.array then
        local arr
        if type(raw) == "table" then
            if spec.explode or spec.style == "simple" then
                arr = setmetatable({}, ARR)
                for i = 1, #raw do
                    arr[i] = raw[i]
                end
                if spec.style == "simple" then
                    arr = split(concat(arr, ","), ",")
                end
            else
                arr = split(tostring(raw[#raw]), DELIM[spec.style] or ",")
            end
        elseif spec.explode and spec.style == "form" then
            arr = setmetatable({ raw }, ARR)
        else
            arr = split(raw, DELIM[spec.style] or ",")
        end
        local kind = spec.kind
        for i = 1, #arr do
            local item = arr[i]
            if spec.style == "simple" and type(item) == "string" then
                item = match(item, "^%s*(.-)%s*$")
            end
            arr[i] = coerce(item, kind)
        end
        return arr
    end
    if type(raw) == "table" then
        raw = raw[1] -- a repeated scalar: the first one counts (nginx's $arg_ does the same)
    end
    return coerce(raw, spec.kind)
end

local function cookies()
    local header = var.http_cookie
    local out = {}
    if not header then
        return out
    end
    for pair in gmatch(header, "[^;]+") do
        local k, v = match(pair, "^%s*([^=]-)%s*=%s*(.-)%s*$")
        if k and out[k] == nil then
            out[k] = v
        end
    end
    return out
end

-- Per-request sources, read at most once each.
local src_query, src_headers, src_cookies

local function source(where)
    if where == "query" then
        if not src_query then
            src_query = get_uri_args(100)
        end
        return src_query
    elseif where == "header" then
        if not src_headers then
            src_headers = get_headers(100)
        end
        return src_headers
    elseif where == "cookie" then
        if not src_cookies then
            src_cookies = cookies()
        end
        return src_cookies
    end
end

-- Used by generated code: the coerced value of a parameter, or nil when absent.
local function param(where, name, spec, caps)
    local raw
    if where == "path" then
        raw = caps and caps[spec.index]
    else
        raw = source(where)[name]
        if raw == true then
            raw = "" -- "?flag" without "="
        end
    end
    if raw == nil then
        return nil
    end
    return param_value(raw, spec)
end
_M.rt.param = param

-- Bodies -----------------------------------------------------------------------

local function media_type()
    local ct = var.content_type
    if not ct then
        return nil
    end
    local mt = match(ct, "^%s*([^;%s]+)")
    return mt and lower(mt)
end

local function has_body()
    local cl = var.http_content_length
    if cl then
        return tonumber(cl) ~= 0
    end
    return var.http_transfer_encoding ~= nil
end

local function body_text()
    read_body()
    local data = get_body_data()
    if data then
        return data
    end
    local file = get_body_file()
    if not file then
        return ""
    end
    local f = io_open(file, "rb")
    if not f then
        return nil
    end
    data = f:read("*a")
    f:close()
    return data
end

-- media: the operation's declared types; returns the entry for mt.
local function pick(media, mt)
    local e = media[mt]
    if e then
        return e
    end
    if mt then
        local major = match(mt, "^([^/]+)/")
        e = major and media[major .. "/*"]
        if e then
            return e
        end
    end
    return media["*/*"]
end

local function form_object(text, entry)
    local args = decode_args(text, 100)
    local names = {}
    for k in pairs(args) do
        if type(k) == "string" then
            names[#names + 1] = k
        end
    end
    sort(names) -- pairs() order is not stable; errors should be
    local obj = setmetatable({}, OBJ)
    local specs = entry.fields or {}
    for i = 1, #names do
        local k = names[i]
        local raw = args[k]
        if raw == true then
            raw = ""
        end
        local spec = specs[k]
        local v
        if spec then
            v = param_value(raw, spec)
        elseif type(raw) == "table" then
            v = setmetatable({}, ARR)
            for j = 1, #raw do
                v[j] = raw[j] == true and "" or raw[j]
            end
        else
            v = raw
        end
        obj[i] = k
        obj[k] = v
    end
    return obj
end

local depth_limit = 64
-- nginx's client_max_body_size answers 413 before Lua runs; this is a second
-- line for configurations that lift it (client_max_body_size 0).
local max_body

-- Used by generated code: nil, or status and reason when the body is refused
-- before its schema could be checked. Schema errors are recorded with err().
local function body(spec)
    P[1] = "body"
    if not has_body() then
        if spec.required then
            err(1, "required", "the request body is required")
            return 400, "body_required"
        end
        return nil
    end
    local mt = media_type()
    local entry = pick(spec.media, mt)
    if not entry then
        P[1] = "header"
        err(1, "content-type", mt and ("Content-Type " .. mt .. " is not accepted; use " .. spec.accepts)
            or ("a Content-Type is required; use " .. spec.accepts), "Content-Type")
        return 415, "unsupported_media_type"
    end
    if not entry.fn then
        return nil -- declared, but not a type gwc validates (binary, multipart)
    end
    local text = body_text()
    if not text then
        err(1, "body", "the body could not be read")
        return 400, "body_malformed"
    end
    if text == "" then -- e.g. an empty chunked body: no body after all
        if spec.required then
            err(1, "required", "the request body is required")
            return 400, "body_required"
        end
        return nil
    end
    if max_body and #text > max_body then
        err(1, "maxBodySize", "the body is larger than " .. max_body .. " bytes")
        return 413, "body_too_large"
    end
    local value
    if entry.form then
        value = form_object(text, entry)
    else
        local kind, detail
        value, kind, detail = json.decode(text, depth_limit, spec.d4)
        if value == nil then
            if kind == "too_deep" then
                err(1, "json", "the body is " .. detail)
                return 400, "body_too_deep"
            elseif kind == "duplicate" then
                err(1, "json", "duplicate key '" .. detail .. "'")
                return 400, "body_malformed"
            end
            err(1, "json", "malformed JSON: " .. (detail or "invalid"))
            return 400, "body_malformed"
        end
    end
    entry.fn(value, 1, true, nil)
    return nil
end
_M.rt.body = body

-- Entry points -------------------------------------------------------------------

local validators = {}

-- validators_table: what the generated module returns, { [operation_id] = fn }.
-- opts.max_depth: JSON nesting limit for bodies (default 64);
-- opts.max_body: bytes; a larger body is refused with 413 (default: none).
function _M.load(validators_table, opts)
    if type(validators_table) ~= "table" then
        return nil, "validators must be a table"
    end
    validators = validators_table
    if opts then
        depth_limit = opts.max_depth or depth_limit
        max_body = opts.max_body
    end
    return true
end

local INTERNAL = { { pointer = "", keyword = "internal", message = "the request could not be validated" } }

-- nil when valid, else status (400/413/415), reason and the list of errors.
function _M.check(op_id, captures)
    local fn = validators[op_id]
    if not fn then
        return nil
    end
    S.n, S.full, S.errs, S.max = 0, false, nil, 10
    src_query, src_headers, src_cookies = nil, nil, nil
    local ok, status, reason = pcall(fn, captures)
    src_query, src_headers, src_cookies = nil, nil, nil
    local errs = S.errs
    S.errs = nil
    if not ok then
        return 400, "invalid_request", INTERNAL
    end
    if status then
        return status, reason, errs or {}
    end
    if S.n > 0 then
        return 400, "invalid_request", errs
    end
    return nil
end

return _M
