-- Request routing: a trie of path segments built from generated data.
--
-- route() runs inside set_by_lua, which never yields, so the scratch tables
-- below can be shared by every request of a worker without allocation.
local ngx = ngx
local var = ngx.var
local get_method = ngx.req.get_method
local find = string.find
local sub = string.sub
local match = string.match
local concat = table.concat
local type = type
local char = string.char
local byte = string.byte
local format = string.format
local gsub = string.gsub
local tohex = require("bit").tohex

local _M = { _VERSION = "0.1.0" }

local tree, routes, ops, ops_by_id
local base_path, base_prefix, base_len = "", "/", 0
local reject_encoded_slashes = true
local ignore_trailing_slash = false

local segs = {}
local caps = {}
local greedy_caps = {}
local rewrite_buf = {}
local greedy_route
local request_id_prefix = "000000000000000000000000"
local next_request = 0
local REQUEST_ID_WRAP = 4294967296 -- bit.tohex keeps 32 bits

local function split(path)
    local n, pos = 0, 2
    while true do
        local slash = find(path, "/", pos, true)
        n = n + 1
        if not slash then
            segs[n] = sub(path, pos)
            return n
        end
        segs[n] = sub(path, pos, slash - 1)
        pos = slash + 1
    end
end

-- Depth-first in precedence order: literal, then mixed segments (most
-- literal characters first), then a parameter. The first complete match is
-- the most specific one. Greedy routes are remembered in post-order, so the
-- deepest and most literal greedy candidate is the one kept.
local function walk(node, i, n, ncap)
    if i > n then
        return node.route, ncap
    end
    local seg = segs[i]
    local lit = node.lit
    if lit then
        local child = lit[seg]
        if child then
            local r, nc = walk(child, i + 1, n, ncap)
            if r then
                return r, nc
            end
        end
    end
    if seg ~= "" then
        local mixed = node.mixed
        if mixed then
            for k = 1, #mixed do
                local m = mixed[k]
                local found = { match(seg, m.pattern) }
                local count = #found
                if count > 0 then
                    for j = 1, count do
                        caps[ncap + j] = found[j]
                    end
                    local r, nc = walk(m.node, i + 1, n, ncap + count)
                    if r then
                        return r, nc
                    end
                end
            end
        end
        local param = node.param
        if param then
            caps[ncap + 1] = seg
            local r, nc = walk(param, i + 1, n, ncap + 1)
            if r then
                return r, nc
            end
        end
    end
    local greedy = node.greedy
    if greedy and not greedy_route then
        local rest = concat(segs, "/", i, n)
        if rest ~= "" then
            greedy_route = greedy
            for j = 1, ncap do
                greedy_caps[j] = caps[j]
            end
            greedy_caps[ncap + 1] = rest
        end
    end
    return nil
end

-- Returns the route index and the captures table for the first n segments,
-- and whether the match is a greedy one.
local function find_route(n)
    greedy_route = nil
    local r = walk(tree, 1, n, 0)
    if r then
        return r, caps, false
    end
    if greedy_route then
        return greedy_route, greedy_caps, true
    end
    return nil
end

-- A backslash is always refused: some backends treat it as "/", and it has
-- no legitimate use in an API path. %2F is refused unless decoding is on.
local function has_encoded_slash(raw)
    if not find(raw, "%", 1, true) and not find(raw, "\\", 1, true) then
        return false
    end
    local query = find(raw, "?", 1, true)
    local path = query and sub(raw, 1, query - 1) or raw
    if find(path, "%%5[cC]") or find(path, "\\", 1, true) then
        return true
    end
    return reject_encoded_slashes and find(path, "%%2[fF]")
end

-- Characters a decoded path may hold that are not allowed raw in a request
-- target: everything outside unreserved, sub-delims, ":", "@" and "/".
local UNSAFE = "[^%w%-%._~!%$&'%(%)%*%+,;=:@/]"
local HEX = {}
for byte = 0, 255 do
    HEX[char(byte)] = format("%%%02X", byte)
end

local function escape_path(path)
    if not find(path, UNSAFE) then
        return path
    end
    return (gsub(path, UNSAFE, HEX))
end

-- Strips the base path and matches. Returns route index, captures and the
-- path to forward, or nil.
local function resolve(uri)
    local path = uri
    if base_len > 0 then
        if path == base_path then
            path = "/"
        elseif sub(path, 1, base_len + 1) == base_prefix then
            path = sub(path, base_len + 1)
        else
            return nil
        end
    end
    local n = split(path)
    local r, captured, greedy = find_route(n)
    -- With trailing_slash: ignore, only an exact (non-greedy) match may keep
    -- the slash; otherwise the slash goes before matching and forwarding.
    if ignore_trailing_slash and n > 1 and segs[n] == "" and (not r or greedy) then
        local r2, captured2 = find_route(n - 1)
        if r2 then
            return r2, captured2, sub(path, 1, -2)
        end
    end
    if not r then
        return nil
    end
    return r, captured, path
end

-- Returns the name of the internal location to jump to. Error outcomes are
-- "e400", "e404" and "e405"; the reason is left in $gw_problem.
function _M.route()
    var.gw_rid = request_id_prefix .. tohex(next_request, 8)
    next_request = next_request + 1
    if next_request == REQUEST_ID_WRAP then
        _M.new_request_id_prefix()
    end

    if has_encoded_slash(var.request_uri) then
        var.gw_problem = "encoded_slash"
        return "e400"
    end

    local r, captured, path = resolve(var.uri)
    if not r then
        return "e404"
    end

    local route = routes[r]
    local method = get_method()
    local methods = route.methods
    local index = methods[method]
    if not index and method == "HEAD" then
        index = methods.GET
    end
    if not index then
        var.gw_allow = route.allow
        return "e405"
    end

    local op = ops[index]
    var.gw_op = op.id

    local target
    local rewrite = op.rewrite
    if rewrite then
        local count = #rewrite
        for j = 1, count do
            local part = rewrite[j]
            if type(part) == "number" then
                rewrite_buf[j] = escape_path(captured[part])
            else
                rewrite_buf[j] = part
            end
        end
        target = concat(rewrite_buf, "", 1, count)
    else
        target = escape_path(path)
    end
    local args = var.args
    if args and args ~= "" then
        target = target .. "?" .. args
    end
    var.gw_upstream_uri = target
    return op.loc
end

-- The Allow list for a path, for 405s that nginx raises before routing
-- (TRACE, for one). Not on the hot path.
function _M.allowed_methods(uri)
    local r = resolve(uri)
    return r and routes[r].allow or nil
end

local function hex_byte(c)
    return format("%02x", byte(c))
end

-- Request ids are a random 96-bit per-worker prefix plus a counter: unique
-- without a CSPRNG call per request. They correlate logs; they are not secrets.
function _M.new_request_id_prefix()
    local file = io.open("/dev/urandom", "rb")
    local bytes = file and file:read(12)
    if file then
        file:close()
    end
    if not bytes or #bytes ~= 12 then
        bytes = format("%012d", ngx.worker.pid()) .. sub(format("%.6f", ngx.now()), -12)
    end
    request_id_prefix = sub(gsub(bytes, ".", hex_byte), 1, 24)
    next_request = 0
end

_M.init_worker = _M.new_request_id_prefix

function _M.operation(id)
    return ops_by_id and ops_by_id[id]
end

function _M.load(data)
    if type(data) ~= "table" or type(data.tree) ~= "table" or type(data.routes) ~= "table"
        or type(data.operations) ~= "table" then
        return nil, "missing tree, routes or operations"
    end
    tree, routes, ops = data.tree, data.routes, data.operations
    ops_by_id = {}
    for i = 1, #ops do
        ops_by_id[ops[i].id] = ops[i]
    end
    base_path = data.base_path or ""
    base_len = #base_path
    base_prefix = base_path .. "/"
    reject_encoded_slashes = data.encoded_slashes ~= "decode"
    ignore_trailing_slash = data.trailing_slash == "ignore"
    return true
end

return _M
