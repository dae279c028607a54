-- JSON decoder for request validation.
--
-- cjson cannot be used as is: it folds {} and [] into the same empty table,
-- forgets whether a number was written 1 or 1.0, keeps the last of duplicate
-- keys, and its depth error surfaces as a thrown error. This decoder gives
-- validators what they need:
--   objects: tables with the OBJ metatable; the keys, in document order, are
--            also stored at [1..n] (JSON keys are strings, so integer slots
--            are free), so iteration is ordered and #t is the key count;
--   arrays:  tables with the ARR metatable, elements at [1..n];
--   null:    ngx.null (no holes in arrays);
--   numbers: Lua numbers. With `boxed_floats` (draft 4 / OpenAPI 3.0, where
--            1.0 is not an integer) an integral number written with a
--            fraction or exponent is boxed as setmetatable({value}, NUMBOX).
-- Duplicate keys and nesting beyond max_depth are rejected, so the
-- recursion here and in the validators is bounded.
local ffi = require "ffi"

local ffi_cast = ffi.cast
local sub = string.sub
local char = string.char
local concat = table.concat
local tonumber = tonumber
local setmetatable = setmetatable
local error = error
local pcall = pcall
local type = type
local floor = math.floor
local null = ngx.null

local _M = { _VERSION = "0.1.0" }

local OBJ = { __name = "object" }
local ARR = { __name = "array" }
local NUMBOX = { __name = "number" }
_M.OBJ, _M.ARR, _M.NUMBOX, _M.null = OBJ, ARR, NUMBOX, null

-- The decoder never yields, so one set of cursor variables per worker is safe.
local buf, pos, len, text, max_depth, boxed

local value -- forward

local function fail(kind, what)
    error({ kind, what }, 0)
end

local function skip_ws()
    local p = pos
    while p < len do
        local b = buf[p]
        if b ~= 32 and b ~= 10 and b ~= 13 and b ~= 9 then
            break
        end
        p = p + 1
    end
    pos = p
end

local function hex4(p)
    local n = 0
    for i = p, p + 3 do
        if i >= len then
            fail("malformed", "truncated \\u escape")
        end
        local b = buf[i]
        local d
        if b >= 48 and b <= 57 then
            d = b - 48
        elseif b >= 97 and b <= 102 then
            d = b - 87
        elseif b >= 65 and b <= 70 then
            d = b - 55
        else
            fail("malformed", "bad \\u escape")
        end
        n = n * 16 + d
    end
    return n
end

local function utf8_char(cp)
    if cp < 0x80 then
        return char(cp)
    elseif cp < 0x800 then
        return char(0xC0 + floor(cp / 64), 0x80 + cp % 64)
    elseif cp < 0x10000 then
        return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
    end
    return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64, 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
end

-- Validates one UTF-8 sequence starting at p (lead byte b >= 0x80); returns its length.
local function utf8_seq(p, b)
    local n, min
    if b >= 0xC2 and b <= 0xDF then
        n = 1
    elseif b >= 0xE0 and b <= 0xEF then
        n, min = 2, b == 0xE0 and 0xA0 or 0x80
    elseif b >= 0xF0 and b <= 0xF4 then
        n, min = 3, b == 0xF0 and 0x90 or 0x80
    else
        fail("malformed", "invalid UTF-8")
    end
    if p + n >= len then
        fail("malformed", "invalid UTF-8")
    end
    local b1 = buf[p + 1]
    local max = (b == 0xED and 0x9F) or (b == 0xF4 and 0x8F) or 0xBF
    if b1 < (min or 0x80) or b1 > max then
        fail("malformed", "invalid UTF-8")
    end
    for i = p + 2, p + n do
        local c = buf[i]
        if c < 0x80 or c > 0xBF then
            fail("malformed", "invalid UTF-8")
        end
    end
    return n + 1
end

-- pos is just past the opening quote.
local function str()
    local start = pos
    local p = pos
    while true do
        if p >= len then
            fail("malformed", "unterminated string")
        end
        local b = buf[p]
        if b == 34 then
            pos = p + 1
            return sub(text, start + 1, p)
        elseif b == 92 then
            break
        elseif b < 32 then
            fail("malformed", "control character in string")
        elseif b >= 128 then
            p = p + utf8_seq(p, b)
        else
            p = p + 1
        end
    end
    -- Slow path: the string has escapes.
    local parts, np = { sub(text, start + 1, p) }, 1
    while true do
        if p >= len then
            fail("malformed", "unterminated string")
        end
        local b = buf[p]
        if b == 34 then
            pos = p + 1
            return concat(parts, "", 1, np)
        elseif b == 92 then
            local e = p + 1 < len and buf[p + 1] or 0
            local out
            if e == 34 then out = '"'
            elseif e == 92 then out = "\\"
            elseif e == 47 then out = "/"
            elseif e == 98 then out = "\b"
            elseif e == 102 then out = "\f"
            elseif e == 110 then out = "\n"
            elseif e == 114 then out = "\r"
            elseif e == 116 then out = "\t"
            elseif e == 117 then
                local cp = hex4(p + 2)
                p = p + 4
                if cp >= 0xD800 and cp <= 0xDBFF then
                    if p + 7 < len and buf[p + 2] == 92 and buf[p + 3] == 117 then
                        local lo = hex4(p + 4)
                        if lo >= 0xDC00 and lo <= 0xDFFF then
                            cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
                            p = p + 6
                        else
                            fail("malformed", "lone surrogate")
                        end
                    else
                        fail("malformed", "lone surrogate")
                    end
                elseif cp >= 0xDC00 and cp <= 0xDFFF then
                    fail("malformed", "lone surrogate")
                end
                out = utf8_char(cp)
            else
                fail("malformed", "bad escape")
            end
            np = np + 1
            parts[np] = out
            p = p + 2
        elseif b < 32 then
            fail("malformed", "control character in string")
        else
            local q = p
            while q < len do
                local c = buf[q]
                if c == 34 or c == 92 or c < 32 then
                    break
                end
                if c >= 128 then
                    q = q + utf8_seq(q, c)
                else
                    q = q + 1
                end
            end
            np = np + 1
            parts[np] = sub(text, p + 1, q)
            p = q
        end
    end
end

local function num()
    local start = pos
    local p = pos
    local b = buf[p]
    local neg = false
    if b == 45 then
        neg = true
        p = p + 1
        b = p < len and buf[p] or 0
    end
    if b == 48 then
        p = p + 1
    elseif b >= 49 and b <= 57 then
        p = p + 1
        while p < len and buf[p] >= 48 and buf[p] <= 57 do
            p = p + 1
        end
    else
        fail("malformed", "bad number")
    end
    local int_end = p
    local frac = false
    if p < len and buf[p] == 46 then
        p = p + 1
        if not (p < len and buf[p] >= 48 and buf[p] <= 57) then
            fail("malformed", "bad number")
        end
        while p < len and buf[p] >= 48 and buf[p] <= 57 do
            p = p + 1
        end
        frac = true
    end
    if p < len and (buf[p] == 101 or buf[p] == 69) then
        p = p + 1
        if p < len and (buf[p] == 43 or buf[p] == 45) then
            p = p + 1
        end
        if not (p < len and buf[p] >= 48 and buf[p] <= 57) then
            fail("malformed", "bad number")
        end
        while p < len and buf[p] >= 48 and buf[p] <= 57 do
            p = p + 1
        end
        frac = true
    end
    pos = p
    if not frac and int_end - start <= 15 then
        -- Short integers are exact in a double: no substring, no tonumber.
        local n = 0
        for i = neg and start + 1 or start, int_end - 1 do
            n = n * 10 + (buf[i] - 48)
        end
        return neg and -n or n
    end
    local n = tonumber(sub(text, start + 1, p))
    if frac and boxed and n % 1 == 0 then
        return setmetatable({ n }, NUMBOX)
    end
    return n
end

local function object(depth)
    if depth > max_depth then
        fail("too_deep", "nested more than " .. max_depth .. " levels")
    end
    local t = setmetatable({}, OBJ)
    local n = 0
    pos = pos + 1
    skip_ws()
    if pos < len and buf[pos] == 125 then
        pos = pos + 1
        return t
    end
    while true do
        if pos >= len or buf[pos] ~= 34 then
            fail("malformed", "expected a string key")
        end
        pos = pos + 1
        local k = str()
        skip_ws()
        if pos >= len or buf[pos] ~= 58 then
            fail("malformed", "expected ':'")
        end
        pos = pos + 1
        skip_ws()
        if t[k] ~= nil then
            fail("duplicate", k)
        end
        n = n + 1
        t[n] = k
        t[k] = value(depth)
        skip_ws()
        local b = pos < len and buf[pos] or 0
        if b == 44 then
            pos = pos + 1
            skip_ws()
        elseif b == 125 then
            pos = pos + 1
            return t
        else
            fail("malformed", "expected ',' or '}'")
        end
    end
end

local function array(depth)
    if depth > max_depth then
        fail("too_deep", "nested more than " .. max_depth .. " levels")
    end
    local t = setmetatable({}, ARR)
    local n = 0
    pos = pos + 1
    skip_ws()
    if pos < len and buf[pos] == 93 then
        pos = pos + 1
        return t
    end
    while true do
        n = n + 1
        t[n] = value(depth)
        skip_ws()
        local b = pos < len and buf[pos] or 0
        if b == 44 then
            pos = pos + 1
            skip_ws()
        elseif b == 93 then
            pos = pos + 1
            return t
        else
            fail("malformed", "expected ',' or ']'")
        end
    end
end

local function word(w, v)
    if sub(text, pos + 1, pos + #w) ~= w then
        fail("malformed", "unexpected token")
    end
    pos = pos + #w
    return v
end

value = function(depth)
    if pos >= len then
        fail("malformed", "unexpected end of input")
    end
    local b = buf[pos]
    if b == 123 then
        return object(depth + 1)
    elseif b == 91 then
        return array(depth + 1)
    elseif b == 34 then
        pos = pos + 1
        return str()
    elseif b == 45 or (b >= 48 and b <= 57) then
        return num()
    elseif b == 116 then
        return word("true", true)
    elseif b == 102 then
        return word("false", false)
    elseif b == 110 then
        return word("null", null)
    end
    fail("malformed", "unexpected character")
end

local function run()
    skip_ws()
    local v = value(0)
    skip_ws()
    if pos < len then
        fail("malformed", "trailing characters after the value")
    end
    return v
end

-- decode(s, depth_limit, boxed_floats) -> value | nil, kind, detail
-- kind: "malformed", "duplicate" (detail: the key) or "too_deep".
function _M.decode(s, depth_limit, boxed_floats)
    if type(s) ~= "string" then
        return nil, "malformed", "no body"
    end
    text, len, pos = s, #s, 0
    buf = ffi_cast("const uint8_t *", s)
    max_depth = depth_limit or 64
    boxed = boxed_floats and true or false
    local ok, v = pcall(run)
    buf, text = nil, nil
    if ok then
        return v
    end
    if type(v) == "table" then
        return nil, v[1], v[2]
    end
    return nil, "malformed", "invalid JSON"
end

return _M
