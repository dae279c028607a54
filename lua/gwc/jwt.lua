-- JWS compact-serialisation JWT verification (RFC 7515, 7519, 8725).
--
-- Keys come typed from gwc.jwks, so an algorithm can only ever be checked
-- with a key of its own family: HS* never sees an RSA public key.
--
-- A verified token is cached per worker under the full token string until
-- it expires (or cache_ttl passes, so a withdrawn key stops being honoured
-- within that time). A cache hit is one table lookup: no decoding, no
-- crypto. Cached claims tables are shared: callers must not modify them.
--
-- Reason codes (stable; the problem catalogue maps them to responses):
-- jwt_malformed, jwt_too_large, jwt_bad_encoding, jwt_alg_not_allowed,
-- jwt_crit, jwt_kid_required, jwt_unknown_kid, jwt_bad_signature,
-- jwt_expired, jwt_not_yet_valid, jwt_bad_issuer, jwt_bad_audience,
-- jwt_missing_claim, jwks_unavailable.
local cjson_safe = require "cjson.safe"
local base64 = require "ngx.base64"
local lrucache = require "resty.lrucache"

-- A private instance: RFC 8259 JSON only. The shared default also takes
-- NaN, Infinity and hex numbers, and an exp of NaN would never expire.
local cjson = cjson_safe.new()
cjson.decode_invalid_numbers(false)

local ngx = ngx
local now = ngx.now
local decode_json = cjson.decode
local decode_base64url = base64.decode_base64url
local find = string.find
local sub = string.sub
local byte = string.byte
local gmatch = string.gmatch
local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local setmetatable = setmetatable
local math_min = math.min
local unpack = unpack
local NULL = cjson.null

local _M = { _VERSION = "0.1.0" }

local SUPPORTED = {
    HS256 = true, HS384 = true, HS512 = true,
    RS256 = true, RS384 = true, RS512 = true,
    PS256 = true, PS384 = true, PS512 = true,
    ES256 = true, ES384 = true, ES512 = true,
    EdDSA = true,
}

-- A base64url segment of length 4k+2 ends in a character whose low four
-- bits are zero, one of 4k+3 in one whose low two bits are zero; anything
-- else has non-zero padding bits, which ngx's decoder silently drops.
local TAIL2, TAIL3 = {}, {}
for c in gmatch("AQgw", ".") do
    TAIL2[byte(c)] = true
end
for c in gmatch("AEIMQUYcgkosw048", ".") do
    TAIL3[byte(c)] = true
end

local function canonical(token, first, last)
    local r = (last - first + 1) % 4
    if r == 0 then
        return true
    elseif r == 2 then
        return TAIL2[byte(token, last)] == true
    elseif r == 3 then
        return TAIL3[byte(token, last)] == true
    end
    return false
end

-- Parsed JOSE headers by their encoded form: an issuer signs with few keys,
-- so nearly every token repeats one of a handful of headers. Only headers
-- that passed the structural checks are kept.
local headers = lrucache.new(256)

local function parse_header(hseg)
    local raw = decode_base64url(hseg)
    if not raw then
        return nil, "jwt_bad_encoding", "header"
    end
    local h = decode_json(raw)
    if type(h) ~= "table" then
        return nil, "jwt_malformed", "header is not a JSON object"
    end
    local alg, kid = h.alg, h.kid
    if type(alg) ~= "string" then
        return nil, "jwt_malformed", "alg missing"
    end
    if kid ~= nil and type(kid) ~= "string" then
        return nil, "jwt_malformed", "kid is not a string"
    end
    if h.crit ~= nil then
        -- RFC 7515 4.1.11: we understand no extension, so none may be critical.
        return nil, "jwt_crit", "crit"
    end
    if h.b64 ~= nil then
        return nil, "jwt_malformed", "b64 header"
    end
    h = { alg = alg, kid = kid }
    headers:set(hseg, h)
    return h
end

-- Scopes of a claims table as a set, memoised per claims table (which the
-- token cache keeps alive for the life of the token).
local scope_sets = setmetatable({}, { __mode = "k" })

local function add_scopes(set, value)
    if type(value) == "string" then
        for s in gmatch(value, "%S+") do
            set[s] = true
        end
    elseif type(value) == "table" then
        for _, s in ipairs(value) do
            if type(s) == "string" then
                set[s] = true
            end
        end
    end
end

-- True if claims grant every scope in required (a list).
function _M.has_scopes(claims, required)
    if not required or #required == 0 then
        return true
    end
    if type(claims) ~= "table" then
        return false
    end
    local set = scope_sets[claims]
    if not set then
        set = {}
        add_scopes(set, claims.scope)
        add_scopes(set, claims.scp)
        scope_sets[claims] = set
    end
    for i = 1, #required do
        if not set[required[i]] then
            return false
        end
    end
    return true
end

local function audience_ok(audiences, claims)
    local aud = claims.aud
    if type(aud) == "string" then
        if audiences[aud] then
            return true
        end
    elseif type(aud) == "table" then
        for i = 1, #aud do
            if audiences[aud[i]] then
                return true
            end
        end
    end
    -- AWS (Cognito access tokens) carries the audience as client_id.
    local client_id = claims.client_id
    return type(client_id) == "string" and audiences[client_id] == true
end

local Verifier = {}
Verifier.__index = Verifier

local function is_time(v)
    return v == nil or type(v) == "number"
end

-- The claims of a token verified earlier under this cache key, or nil.
function Verifier:cached(cache_key)
    local cache = self.cache
    return cache and cache:get(cache_key) or nil
end

-- Returns the claims table, or nil, a reason code and a detail.
-- cache_key, when given, replaces the token as the verified-token cache key:
-- a caller can key on the raw header value and skip extracting the token
-- on a hit.
function Verifier:verify(token, cache_key)
    local cache = self.cache
    if cache then
        local hit = cache:get(cache_key or token)
        if hit then
            return hit
        end
    end
    if type(token) ~= "string" then
        return nil, "jwt_malformed", "no token"
    end
    local len = #token
    if len > self.max_bytes then
        return nil, "jwt_too_large"
    end
    local d1 = find(token, ".", 1, true)
    local d2 = d1 and find(token, ".", d1 + 1, true)
    if not d2 or d1 == 1 or d2 == d1 + 1 or find(token, ".", d2 + 1, true) then
        return nil, "jwt_malformed", "not a JWS compact serialisation"
    end
    if find(token, "=", 1, true) then
        return nil, "jwt_bad_encoding", "padding"
    end
    if not canonical(token, 1, d1 - 1) or not canonical(token, d1 + 1, d2 - 1)
        or not canonical(token, d2 + 1, len)
    then
        return nil, "jwt_bad_encoding", "non-canonical base64url"
    end

    local hseg = sub(token, 1, d1 - 1)
    local header = headers:get(hseg)
    if not header then
        local reason, detail
        header, reason, detail = parse_header(hseg)
        if not header then
            return nil, reason, detail
        end
    end
    local alg = header.alg
    if not self.algs[alg] then
        return nil, "jwt_alg_not_allowed", alg
    end

    local sig = decode_base64url(sub(token, d2 + 1))
    if not sig then
        return nil, "jwt_bad_encoding", "signature"
    end
    local key, reason = self.keys:get(header.kid, alg)
    if not key then
        return nil, reason, header.kid
    end
    local ok, why = key:verify(alg, token, d2 - 1, sig)
    if not ok then
        if why == "alg" then
            return nil, "jwt_alg_not_allowed", alg
        end
        return nil, "jwt_bad_signature"
    end

    local raw = decode_base64url(sub(token, d1 + 1, d2 - 1))
    if not raw then
        return nil, "jwt_bad_encoding", "payload"
    end
    local claims = decode_json(raw)
    if type(claims) ~= "table" or claims[1] ~= nil then
        return nil, "jwt_malformed", "payload is not a JSON object"
    end

    local exp, nbf, iat = claims.exp, claims.nbf, claims.iat
    if not is_time(exp) or not is_time(nbf) or not is_time(iat) then
        return nil, "jwt_malformed", "exp, nbf and iat must be numbers"
    end
    local t = now()
    local leeway = self.leeway
    if exp and exp + leeway <= t then
        return nil, "jwt_expired"
    end
    if (nbf and nbf - leeway > t) or (iat and iat - leeway > t) then
        return nil, "jwt_not_yet_valid"
    end
    local issuer = self.issuer or self.keys:issuer()
    if issuer and claims.iss ~= issuer then
        return nil, "jwt_bad_issuer"
    end
    local audiences = self.audiences
    if audiences and not audience_ok(audiences, claims) then
        return nil, "jwt_bad_audience"
    end
    local required = self.required
    for i = 1, #required do
        local v = claims[required[i]]
        if v == nil or v == NULL then
            return nil, "jwt_missing_claim", required[i]
        end
    end

    if cache then
        local ttl = self.cache_ttl
        if exp then
            ttl = math_min(ttl, exp + leeway - t)
        end
        if ttl > 0 then
            cache:set(cache_key or token, claims, ttl)
        end
    end
    return claims
end

local function string_list(v, what)
    if v == nil then
        return {}
    end
    if type(v) ~= "table" then
        return nil, what .. " must be a list of strings"
    end
    for _, s in ipairs(v) do
        if type(s) ~= "string" then
            return nil, what .. " must be a list of strings"
        end
    end
    return v
end

-- conf: keys (a gwc.jwks set), algorithms, issuer, audiences, leeway (s),
-- required_claims, max_token_bytes, cache_size (0 disables the cache),
-- cache_ttl (s, upper bound for a cached verification).
function _M.new(conf)
    if type(conf) ~= "table" then
        return nil, "conf must be a table"
    end
    local keys = conf.keys
    if type(keys) ~= "table" or type(keys.get) ~= "function" then
        return nil, "keys must be a gwc.jwks set"
    end
    local algs, err = string_list(conf.algorithms, "algorithms")
    if not algs then
        return nil, err
    end
    if #algs == 0 then
        return nil, "algorithms must not be empty"
    end
    local alg_set = {}
    for _, a in ipairs(algs) do
        if not SUPPORTED[a] then
            return nil, "unsupported algorithm " .. a
        end
        alg_set[a] = true
    end
    if conf.issuer ~= nil and type(conf.issuer) ~= "string" then
        return nil, "issuer must be a string"
    end
    local auds
    auds, err = string_list(conf.audiences, "audiences")
    if not auds then
        return nil, err
    end
    local aud_set
    if #auds > 0 then
        aud_set = {}
        for _, a in ipairs(auds) do
            aud_set[a] = true
        end
    end
    local required
    required, err = string_list(conf.required_claims, "required_claims")
    if not required then
        return nil, err
    end
    local leeway = conf.leeway or 60
    local max_bytes = conf.max_token_bytes or 8192
    local cache_size = conf.cache_size or 10000
    local cache_ttl = conf.cache_ttl or 300
    for name, v in pairs({ leeway = leeway, max_token_bytes = max_bytes,
                           cache_size = cache_size, cache_ttl = cache_ttl }) do
        if type(v) ~= "number" or v < 0 then
            return nil, name .. " must be a non-negative number"
        end
    end
    local cache
    if cache_size >= 1 and cache_ttl > 0 then
        cache, err = lrucache.new(cache_size)
        if not cache then
            return nil, "token cache: " .. tostring(err)
        end
    end
    return setmetatable({
        keys = keys,
        algs = alg_set,
        issuer = conf.issuer,
        audiences = aud_set,
        leeway = leeway,
        required = { unpack(required) },
        max_bytes = max_bytes,
        cache = cache,
        cache_ttl = cache_ttl,
    }, Verifier)
end

_M.SUPPORTED = SUPPORTED

return _M
