-- Request routing: a trie of path segments built from generated data.
--
-- route() runs inside set_by_lua, which never yields, so the scratch tables
-- below can be shared by every request of a worker without allocation.
local ngx = ngx
local var = ngx.var
local get_method = ngx.req.get_method
local get_uri_args = ngx.req.get_uri_args
local find = string.find
local sub = string.sub
local match = string.match
local concat = table.concat
local type = type
local pairs = pairs
local ipairs = ipairs
local loadstring = loadstring
local char = string.char
local byte = string.byte
local format = string.format
local gsub = string.gsub
local lower = string.lower
local tohex = require("bit").tohex
local json_encode = require("cjson.safe").encode
local cache_generation = require("gwc.response_cache").generation

local _M = { _VERSION = "0.1.0" }

local tree, routes, ops, ops_by_id
-- Base paths, longest first; each serves the whole API.
local base_paths, base_prefixes, base_lens, base_count = { "" }, { "/" }, { 0 }, 1
local ignore_trailing_slash = false

local caps = {}
local greedy_caps = {}
local rewrite_buf = {}
local request_id_prefix = "000000000000000000000000"
local next_request = 0
local REQUEST_ID_WRAP = 4294967296 -- bit.tohex keeps 32 bits
local SLASH = 47

-- Depth-first in precedence order: literal, then mixed segments (most
-- literal characters first), then a parameter. The first complete match is
-- the most specific one. Greedy routes are remembered in post-order, so the
-- deepest and most literal greedy candidate is the one kept.
--
-- pos is where the current segment starts in path, nil past the end.
--
-- One copy of this function is compiled per trie level, each calling the
-- next level's copy (descend): route() is entered from C once per request,
-- and LuaJIT gives up on a trace that meets an inner loop or true recursion,
-- which would leave the router interpreted. Distinct functions per level
-- keep the common path (no mixed segments, no greedy match) loop-free.
local WALK_SOURCE = [=[
local find, sub, match, caps, greedy, descend = ...

local function try_mixed(m, seg, path, next_pos, ncap)
    local count = m.captures
    if count == 1 then
        local c1 = match(seg, m.pattern)
        if not c1 then
            return nil
        end
        caps[ncap + 1] = c1
    elseif count == 2 then
        local c1, c2 = match(seg, m.pattern)
        if not c1 then
            return nil
        end
        caps[ncap + 1] = c1
        caps[ncap + 2] = c2
    else
        local found = { match(seg, m.pattern) }
        if not found[1] then
            return nil
        end
        for j = 1, count do
            caps[ncap + j] = found[j]
        end
    end
    return descend(m.node, path, next_pos, ncap + count)
end

return function(node, path, pos, ncap)
    if not pos then
        return node.route, ncap
    end
    local slash = find(path, "/", pos, true)
    local seg, next_pos
    if slash then
        seg = sub(path, pos, slash - 1)
        next_pos = slash + 1
    else
        seg = sub(path, pos)
    end
    local lit = node.lit
    if lit then
        local child = lit[seg]
        if child then
            local r, nc = descend(child, path, next_pos, ncap)
            if r then
                return r, nc
            end
        end
    end
    if seg ~= "" then
        local mixed = node.mixed
        if mixed then
            -- Unrolled for the usual one or two siblings: a loop here would
            -- end the trace. The loop only runs for a third sibling onwards.
            local r, nc = try_mixed(mixed[1], seg, path, next_pos, ncap)
            if r then
                return r, nc
            end
            if mixed[2] then
                r, nc = try_mixed(mixed[2], seg, path, next_pos, ncap)
                if r then
                    return r, nc
                end
                for k = 3, #mixed do
                    r, nc = try_mixed(mixed[k], seg, path, next_pos, ncap)
                    if r then
                        return r, nc
                    end
                end
            end
        end
        local param = node.param
        if param then
            caps[ncap + 1] = seg
            local r, nc = descend(param, path, next_pos, ncap + 1)
            if r then
                return r, nc
            end
        end
    end
    local greedy_route = node.greedy
    if greedy_route and not greedy.route then
        local rest = sub(path, pos)
        if rest ~= "" then
            greedy.route = greedy_route
            local saved = greedy.caps
            for j = 1, ncap do
                saved[j] = caps[j]
            end
            saved[ncap + 1] = rest
        end
    end
    return nil
end
]=]

local greedy = { route = nil, caps = greedy_caps }

local function past_deepest_node()
    return nil
end

-- Compiles one walker per level, deepest first, for a trie of the given depth.
local function build_walker(depth)
    local descend = past_deepest_node
    for _ = depth, 0, -1 do
        local chunk, err = loadstring(WALK_SOURCE, "=gwc.router.walk")
        if not chunk then
            return nil, err
        end
        descend = chunk(find, sub, match, caps, greedy, descend)
    end
    return descend
end

local walk

local function tree_depth(node)
    local deepest = 0
    local function visit(n, depth)
        if depth > deepest then
            deepest = depth
        end
        for _, child in pairs(n.lit or {}) do
            visit(child, depth + 1)
        end
        for _, m in ipairs(n.mixed or {}) do
            visit(m.node, depth + 1)
        end
        if n.param then
            visit(n.param, depth + 1)
        end
    end
    visit(node, 0)
    return deepest
end

-- Returns the route index and the captures table, and whether the match is
-- a greedy one.
local function find_route(path)
    greedy.route = nil
    local r = walk(tree, path, 2, 0)
    if r then
        return r, caps, false
    end
    local g = greedy.route
    if g then
        return g, greedy_caps, true
    end
    return nil
end

-- Characters a decoded path may hold that are not allowed raw in a request
-- target: everything outside unreserved, sub-delims, ":", "@" and "/".
local UNSAFE = "[^%w%-%._~!%$&'%(%)%*%+,;=:@/]"
local HEX = {}
for code = 0, 255 do
    HEX[char(code)] = format("%%%02X", code)
end

local function escape_path(path)
    if not find(path, UNSAFE) then
        return path
    end
    return (gsub(path, UNSAFE, HEX))
end

-- Matches a path already stripped of a base path. Returns route index,
-- captures and the path to forward, or nil.
local function resolve_in(path)
    local r, captured, greedy = find_route(path)
    -- With trailing_slash: ignore, only an exact (non-greedy) match may keep
    -- the slash; otherwise the slash goes before matching and forwarding.
    if ignore_trailing_slash and (not r or greedy) and #path > 1 and byte(path, -1) == SLASH then
        local stripped = sub(path, 1, -2)
        local r2, captured2 = find_route(stripped)
        if r2 then
            return r2, captured2, stripped
        end
    end
    if not r then
        return nil
    end
    return r, captured, path
end

-- Strips a base path and matches: the first base path (longest first) under
-- which the request matches a route wins. Returns route index, captures and
-- the path to forward, or nil.
local function resolve(uri)
    for i = 1, base_count do
        local len = base_lens[i]
        local path
        if len == 0 then
            path = uri
        elseif uri == base_paths[i] then
            path = "/"
        elseif sub(uri, 1, len + 1) == base_prefixes[i] then
            path = sub(uri, len + 1)
        end
        if path then
            local r, captured, forwarded = resolve_in(path)
            if r then
                return r, captured, forwarded
            end
        end
    end
    return nil
end

-- Several operations on one path and method: the first whose header and
-- query conditions all hold, else the fallback (false: none, a 400).
local function request_media_type()
    local ct = var.content_type
    if not ct then
        return nil
    end
    return lower(match(ct, "^%s*([^;%s]+)") or "")
end

local request_args -- the query of the request being selected for, once parsed

local function meets(choice)
    local media = choice.media
    if media then
        -- By Content-Type: the build made the media types disjoint, type/* included.
        local media_type = request_media_type() or ""
        return media[media_type] or media[(match(media_type, "^[^/]+") or "") .. "/*"] or false
    end
    local when = choice.when
    for j = 1, #when do
        local cond = when[j]
        local value
        if cond[1] == "q" then
            -- Parsed once per request, and only on these routes: a bare `?uploads` is true here.
            if not request_args then
                request_args = get_uri_args(100)
            end
            value = request_args[cond[2]]
            if type(value) == "table" then
                value = value[1]
            end
        else
            value = var[cond[2]]
        end
        if value == nil or (cond[3] ~= true and value ~= cond[3]) then
            return false
        end
    end
    return true
end

-- Returns the operation index, or nil and whether the request met the
-- conditions of two operations at once.
local function select_operation(sel)
    request_args = nil
    local choices = sel.choices
    for i = 1, #choices do
        local choice = choices[i]
        if meets(choice) then
            local rivals = choice.rivals
            if rivals then
                for j = 1, #rivals do
                    if meets(choices[rivals[j]]) then
                        return nil, true
                    end
                end
            end
            return choice.op
        end
    end
    return sel.fallback or nil, false
end

-- The request path as a JSON string, for the problem body nginx sends
-- itself on 404 and 405. Only computed on those answers.
local function instance()
    local raw = var.request_uri
    local query = find(raw, "?", 1, true)
    if query then
        raw = sub(raw, 1, query - 1)
    end
    return (gsub(json_encode(raw), "\\/", "/"))
end

-- Returns the name of the internal location to jump to: an operation's, or
-- "e404" / "e405". Encoded slashes were refused by the server block already;
-- nginx appends the query string ($is_args$args) itself.
function _M.route()
    var.gw_rid = request_id_prefix .. tohex(next_request, 8)
    next_request = next_request + 1
    if next_request == REQUEST_ID_WRAP then
        _M.new_request_id_prefix()
    end

    local r, captured, path = resolve(var.uri)
    if not r then
        var.gw_instance = instance()
        return "e404"
    end

    local route = routes[r]
    local method = get_method()
    -- A CORS preflight (docs/cors.md), answered before authentication by the
    -- gw:pfN of the policy of the operation it asks about (pf0: refused).
    local preflight = route.preflight
    if preflight and method == "OPTIONS" then
        -- An empty header is no header: such an OPTIONS is routed like any other.
        local requested = var.http_access_control_request_method
        if requested and requested ~= "" then
            local origin = var.http_origin
            if origin and origin ~= "" then
                return preflight[requested] or "pf0"
            end
        end
    end
    local methods = route.methods
    local index = methods[method]
    if not index and method == "HEAD" then
        index = methods.GET
    end
    if not index then
        var.gw_allow = route.allow
        var.gw_instance = instance()
        if route.cors then
            var.gw_cors = route.cors -- the path's CORS policy on the gateway's own answer
        end
        return "e405"
    end
    if type(index) == "table" then
        local sel = index
        local both
        index, both = select_operation(sel)
        if not index then
            -- gw:e400s names what the client must send.
            var.gw_expect = both and "only one of " .. sel.expects or sel.expects
            var.gw_instance = instance()
            if route.cors then
                var.gw_cors = route.cors
            end
            return "e400s"
        end
    end

    local op = ops[index]
    var.gw_op = op.id
    if op.cache then
        var.gw_cache_gen = cache_generation(op.id)
    end
    local cors = op.cors
    if cors then
        -- Set here, before the location's WAF and IP checks: their refusals carry it too.
        var.gw_cors = cors
    end
    if op.keep_path then
        var.gw_path = path
    end

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
    var.gw_upstream_uri = target
    return op.loc
end

-- The decoded path parameters of the current request, in template order, for
-- validation in a later phase (route()'s own captures are scratch space).
function _M.captures()
    local path = var.gw_path
    local r, captured = find_route(path or "")
    if not r then
        return {}
    end
    local out = {}
    for i = 1, #routes[r].params do
        out[i] = captured[i]
    end
    return out
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
    local walker, err = build_walker(tree_depth(data.tree))
    if not walker then
        return nil, "cannot compile the trie walker: " .. (err or "unknown error")
    end
    walk = walker
    tree, routes, ops = data.tree, data.routes, data.operations
    ops_by_id = {}
    for i = 1, #ops do
        ops_by_id[ops[i].id] = ops[i]
    end
    local bases = type(data.base_paths) == "table" and #data.base_paths > 0 and data.base_paths or { "" }
    base_paths, base_prefixes, base_lens, base_count = {}, {}, {}, #bases
    for i = 1, base_count do
        base_paths[i] = bases[i]
        base_prefixes[i] = bases[i] .. "/"
        base_lens[i] = #bases[i]
    end
    ignore_trailing_slash = data.trailing_slash == "ignore"
    return true
end

return _M
