-- Invalidation generations of the response cache (docs/cache.md).
--
-- nginx OSS has no purge, so every cache key starts with a generation:
-- "<global>.<operation>". Invalidating bumps one of them, and the old entries
-- are never looked up again (nginx removes them once unread for `inactive`).
--
-- The generations live in the lua_shared_dict gwc_cache_gen: kept across
-- reloads (so is the cache), lost on a restart. A restart must never bring
-- invalidated entries back, so the global generation starts from the clock
-- (milliseconds) whenever it is absent, and a bump never sets a generation
-- below the clock either: a new global value is above every earlier one.
-- Keys are only ever added with safe_add, so the dict never evicts one (an
-- evicted operation generation would fall back to 0).
local ngx = ngx
local var = ngx.var
local shared = ngx.shared
local now = ngx.now
local floor = math.floor
local tostring = tostring
local type = type

local DICT = "gwc_cache_gen"
local GLOBAL = "g"

local _M = { _VERSION = "0.1.0" }

local function clock_ms()
    return floor(now() * 1000)
end

local function global_generation(dict)
    local g = dict:get(GLOBAL)
    if g then
        return g
    end
    dict:safe_add(GLOBAL, clock_ms()) -- another worker may win the race: read what is there
    return dict:get(GLOBAL)
end

-- The generation part of a cached operation's key, read by the router (so a
-- hit pays no Lua handler of its own). Never throws; with no dict or no
-- memory, a key no entry has (a miss that stores nothing anyone reads again)
-- instead of an old generation.
function _M.generation(op_id)
    local dict = shared[DICT]
    local g = dict and global_generation(dict)
    if not g then
        return "x" .. clock_ms() .. "." .. tostring(var.request_id)
    end
    local o = dict:get("o:" .. op_id)
    return g .. "." .. (o or 0)
end

-- Moves a generation past its old value and past the clock.
local function bump(dict, key)
    local old = dict:get(key) or 0
    local new = clock_ms()
    if new <= old then
        new = old + 1
    end
    local ok, err = dict:safe_set(key, new)
    if not ok then
        return nil, err
    end
    return new
end

-- The status listener's POST /cache/invalidate[?operation=ID].
function _M.invalidate()
    local method = ngx.req.get_method()
    if method ~= "POST" then
        ngx.header["Allow"] = "POST"
        return ngx.exit(405)
    end
    local dict = shared[DICT]
    if not dict then
        ngx.status = 404
        ngx.say('{"error":"this build caches no responses"}')
        return ngx.exit(404)
    end
    local args = ngx.req.get_uri_args(8)
    local op = args.operation
    if type(op) == "table" then
        op = op[1]
    end
    local key, what
    if op == nil or op == true or op == "" then
        key, what = GLOBAL, "all"
    else
        if not require("gwc.router").operation(op) then
            ngx.status = 404
            ngx.say('{"error":"unknown operation","operation":', require("cjson.safe").encode(op), "}")
            return ngx.exit(404)
        end
        key, what = "o:" .. op, op
    end
    -- The global generation exists before any bump, so a bump of it is above the boot value.
    global_generation(dict)
    local gen, err = bump(dict, key)
    if not gen then
        ngx.log(ngx.ERR, "gwc cache: cannot store the generation of ", what, ": ", err)
        return ngx.exit(500)
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.say('{"invalidated":', require("cjson.safe").encode(what), ',"generation":', gen, "}")
    return ngx.exit(200)
end

return _M
