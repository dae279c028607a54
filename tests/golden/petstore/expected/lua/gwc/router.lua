-- Request routing: a trie of path segments built from generated data.
--
-- route() runs inside set_by_lua, which never yields, so the scratch tables
-- below can be shared by every request of a worker without allocation.
local ngx = ngx
local var = ngx.var
local get_method = ngx.req.get_method
local escape_uri = ngx.escape_uri
local find = string.find
local sub = string.sub
local match = string.match
local concat = table.concat
local type = type

local _M = { _VERSION = "0.1.0" }

local tree, routes, ops, ops_by_id
local base_path, base_prefix, base_len = "", "/", 0
local reject_encoded_slashes = true
local ignore_trailing_slash = false

local segs = {}
local caps = {}
local greedy_caps = {}
local rewrite_buf = {}
local greedy_route, greedy_ncap

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
            greedy_ncap = ncap + 1
        end
    end
    return nil
end

local function find_route(n)
    greedy_route = nil
    local r = walk(tree, 1, n, 0)
    if r then
        return r, caps
    end
    if greedy_route then
        return greedy_route, greedy_caps
    end
    return nil
end

local function has_encoded_slash(raw)
    if not find(raw, "%", 1, true) and not find(raw, "\\", 1, true) then
        return false
    end
    local query = find(raw, "?", 1, true)
    local path = query and sub(raw, 1, query - 1) or raw
    return find(path, "%%2[fF]") or find(path, "%%5[cC]") or find(path, "\\", 1, true)
end

-- Returns the name of the internal location to jump to. Error outcomes are
-- "e400", "e404" and "e405"; the reason is left in $gw_problem.
function _M.route()
    if reject_encoded_slashes and has_encoded_slash(var.request_uri) then
        var.gw_problem = "encoded_slash"
        return "e400"
    end

    local path = var.uri
    if base_len > 0 then
        if path == base_path then
            path = "/"
        elseif sub(path, 1, base_len + 1) == base_prefix then
            path = sub(path, base_len + 1)
        else
            return "e404"
        end
    end

    local n = split(path)
    local r, captured = find_route(n)
    if not r and ignore_trailing_slash and n > 1 and segs[n] == "" then
        path = sub(path, 1, -2)
        r, captured = find_route(n - 1)
    end
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
                rewrite_buf[j] = escape_uri(captured[part], 0)
            else
                rewrite_buf[j] = part
            end
        end
        target = concat(rewrite_buf, "", 1, count)
    else
        target = escape_uri(path, 0)
    end
    local args = var.args
    if args then
        target = target .. "?" .. args
    end
    var.gw_upstream_uri = target
    return op.loc
end

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
