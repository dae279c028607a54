-- Loads the generated dispatch data once per (re)load, in the master, so
-- workers inherit it read-only and nothing is parsed per request.
local cjson = require "cjson.safe"
local router = require "gwc.router"
-- Loaded here, in the master, so workers share the compiled code and a
-- missing or broken module stops the start instead of failing a request.
local problem = require "gwc.problem"
require "gwc.mock"

local error = error
local io_open = io.open

local _M = { _VERSION = "0.1.0" }

local function data_dir()
    local source = debug.getinfo(1, "S").source
    local dir = source:sub(2):match("^(.*)/[^/]*$") or "."
    return dir .. "/data/"
end

local function read_json(path)
    local file, err = io_open(path, "rb")
    if not file then
        return nil, "cannot read " .. path .. ": " .. (err or "unknown error")
    end
    local text = file:read("*a")
    file:close()
    local data, derr = cjson.decode(text)
    if not data then
        return nil, "cannot parse " .. path .. ": " .. (derr or "unknown error")
    end
    return data
end

-- Called from init_by_lua: failing here stops nginx from starting (or
-- reloading) with a clear message, instead of failing requests later.
function _M.boot()
    local routes, err = read_json(data_dir() .. "routes.json")
    if not routes then
        error("gwc: " .. err, 0)
    end
    local ok, lerr = router.load(routes)
    if not ok then
        error("gwc: invalid routes.json: " .. lerr, 0)
    end
    local problems, perr = read_json(data_dir() .. "problems.json")
    if not problems then
        error("gwc: " .. perr, 0)
    end
    ok, lerr = problem.load(problems)
    if not ok then
        error("gwc: invalid problems.json: " .. lerr, 0)
    end
end

return _M
