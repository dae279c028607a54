-- API-key consumers: keys.json maps the SHA-256 of each key to its consumer.
--
-- Only hashes are stored, so the file can sit in the output directory. The
-- map is keyed by the binary digest: a lookup is one hash plus one table
-- index, never a scan, whatever the number of consumers.
local crypto = require "gwc.crypto"

local sha256 = crypto.sha256
local ngx_time = ngx.time
local type = type
local pairs = pairs
local tonumber = tonumber
local char = string.char
local gsub = string.gsub
local find = string.find

local _M = { _VERSION = "0.1.0" }

local by_digest = {}

local function hex_to_binary(hex)
    return (gsub(hex, "%x%x", function(pair)
        return char(tonumber(pair, 16))
    end))
end

-- data is the decoded keys.json; called at (re)load, in the master.
function _M.load(data)
    if type(data) ~= "table" or type(data.consumers) ~= "table" then
        return nil, "missing consumers"
    end
    local map = {}
    for hex, consumer in pairs(data.consumers) do
        if type(hex) ~= "string" or #hex ~= 64 or find(hex, "[^0-9a-f]") then
            return nil, "a consumer key hash is not 64 lower-case hex digits"
        end
        if type(consumer) ~= "table" or type(consumer.id) ~= "string" then
            return nil, "a consumer has no id"
        end
        map[hex_to_binary(hex)] = {
            id = consumer.id,
            plan = type(consumer.plan) == "string" and consumer.plan or "",
            enabled = consumer.enabled ~= false,
            expires = tonumber(consumer.expires),
        }
    end
    by_digest = map
    return true
end

-- Returns the consumer for a presented key, or nil and a reason code.
function _M.lookup(key)
    if not key or key == "" then
        return nil, "apikey_missing"
    end
    if #key > 512 then
        return nil, "apikey_invalid"
    end
    local digest = sha256(key)
    local consumer = digest and by_digest[digest]
    if not consumer then
        return nil, "apikey_invalid"
    end
    if not consumer.enabled then
        return nil, "apikey_disabled"
    end
    local expires = consumer.expires
    if expires and expires <= ngx_time() then
        return nil, "apikey_expired"
    end
    return consumer
end

return _M
