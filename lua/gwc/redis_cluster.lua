-- Redis Cluster key routing: the CRC16 hash slot of a key, the redirect
-- replies (MOVED / ASK) and the slot map read from CLUSTER SLOTS.
--
-- Connections, the breaker and the retry loop live in gwc.redis; this module
-- holds no sockets, so it can be tested and used without a server.
local bit = require "bit"
local band = bit.band
local bxor = bit.bxor
local lshift = bit.lshift
local rshift = bit.rshift
local byte = string.byte
local find = string.find
local match = string.match
local tonumber = tonumber
local tostring = tostring
local type = type

local ok, new_tab = pcall(require, "table.new")
if not ok then
    new_tab = function() return {} end
end

local _M = { _VERSION = "0.1.0" }

_M.SLOTS = 16384

-- CRC16-CCITT (XMODEM, polynomial 0x1021, initial 0), one table lookup per byte.
local CRC_TABLE = {}
for i = 0, 255 do
    local crc = lshift(i, 8)
    for _ = 1, 8 do
        if band(crc, 0x8000) ~= 0 then
            crc = bxor(lshift(crc, 1), 0x1021)
        else
            crc = lshift(crc, 1)
        end
    end
    CRC_TABLE[i + 1] = band(crc, 0xffff)
end

local function crc16(s, first, last)
    local crc = 0
    for i = first or 1, last or #s do
        crc = bxor(band(lshift(crc, 8), 0xffff), CRC_TABLE[bxor(rshift(crc, 8), byte(s, i)) + 1])
    end
    return crc
end
_M.crc16 = crc16

-- Only the part between the first "{" and the next "}" is hashed when it is
-- non-empty, so keys sharing a tag land on one slot (and one script call).
local function key_slot(key)
    if type(key) ~= "string" then
        key = tostring(key)
    end
    local first, last = 1, #key
    local open = find(key, "{", 1, true)
    if open then
        local close = find(key, "}", open + 1, true)
        if close and close > open + 1 then
            first, last = open + 1, close - 1
        end
    end
    return band(crc16(key, first, last), 16383)
end
_M.key_slot = key_slot

-- "MOVED 3999 127.0.0.1:6381" / "ASK 3999 [::1]:6381" -> kind, slot, host, port.
-- The host may be empty or "?" (the node does not know its own endpoint): the
-- caller then uses the host of the node that answered.
function _M.parse_redirect(err)
    local kind, slot, host, port = match(err, "^(%u+) (%d+) (.*):(%d+)$")
    if kind ~= "MOVED" and kind ~= "ASK" then
        return nil
    end
    if host == "?" then
        host = ""
    end
    host = match(host, "^%[(.*)%]$") or host
    return kind, tonumber(slot), host, tonumber(port)
end

-- A CLUSTER SLOTS reply -> an array indexed by slot + 1 of what node_for(host,
-- port) returns for each range's master, plus one of those masters (the node for
-- commands without a key). Replicas are ignored: reads and writes go to masters.
function _M.build_map(reply, default_host, node_for, node_ctx)
    if type(reply) ~= "table" then
        return nil, "CLUSTER SLOTS did not return an array"
    end
    local map = new_tab(16384, 0)
    local any
    for i = 1, #reply do
        local range = reply[i]
        local first, last, master = range[1], range[2], range[3]
        if type(first) ~= "number" or type(last) ~= "number" or type(master) ~= "table"
            or type(master[2]) ~= "number" then
            return nil, "unexpected CLUSTER SLOTS entry"
        end
        local host = master[1]
        if type(host) ~= "string" or host == "" or host == "?" then
            host = default_host
        end
        local node = node_for(node_ctx, host, master[2])
        any = any or node
        for slot = first + 1, last + 1 do
            map[slot] = node
        end
    end
    if not any then
        return nil, "CLUSTER SLOTS is empty (no slots assigned)"
    end
    return map, any
end

return _M
