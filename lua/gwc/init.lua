-- Loads the generated dispatch data once per (re)load, in the master, so
-- workers inherit it read-only and nothing is parsed per request.
local cjson = require "cjson.safe"
local router = require "gwc.router"
-- Loaded here, in the master, so workers share the compiled code and a
-- missing or broken module stops the start instead of failing a request.
local problem = require "gwc.problem"
local access = require "gwc.access"
local apikeys = require "gwc.apikeys"
local auth = require "gwc.auth"
require "gwc.mock"
require "gwc.status"

local error = error
local io_open = io.open
local loadfile = loadfile
local pcall = pcall
local type = type

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
    _M.load_keys()
    local validators = _M.load_validators()
    local policy, aerr = read_json(data_dir() .. "access.json")
    if not policy then
        error("gwc: " .. aerr, 0)
    end
    ok, lerr = access.load(policy, validators)
    if not ok then
        error("gwc: invalid access.json: " .. lerr, 0)
    end
end

-- keys.json sits at the top of the output directory, beside lua/, so that
-- operators can edit the deployed copy; it is re-read on every reload.
function _M.load_keys()
    local path = data_dir() .. "../../../keys.json"
    local file = io_open(path, "rb")
    if not file then
        return -- no API-key scheme in this build
    end
    file:close()
    local keys, err = read_json(path)
    if not keys then
        error("gwc: " .. err, 0)
    end
    local ok, lerr = apikeys.load(keys)
    if not ok then
        error("gwc: invalid keys.json: " .. lerr, 0)
    end
end

-- The generated request validators (lua/gwc/data/validators.lua), loaded
-- with the runtime that runs them; nil when the build made none.
function _M.load_validators()
    local path = data_dir() .. "validators.lua"
    local file = io_open(path, "rb")
    if not file then
        return nil
    end
    file:close()
    local chunk, err = loadfile(path)
    if not chunk then
        error("gwc: cannot load validators.lua: " .. tostring(err), 0)
    end
    local ok, validators = pcall(chunk)
    if not ok or type(validators) ~= "table" then
        error("gwc: validators.lua did not return a table: " .. tostring(validators), 0)
    end
    local runtime = require "gwc.validation"
    local loaded, lerr = runtime.load(validators)
    if not loaded then
        error("gwc: invalid validators.lua: " .. tostring(lerr), 0)
    end
    return runtime
end

function _M.init_worker()
    router.init_worker()
    auth.init_worker()
end

return _M
