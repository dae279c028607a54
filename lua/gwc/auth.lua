-- OpenAPI security requirements, evaluated per request.
--
-- An operation lists requirement objects; any one may be met (OR), and a
-- requirement is met when every scheme in it is (AND). Each scheme checker
-- returns an identity or nil, status, reason; when no requirement is met the
-- most significant failure is answered: a refusal of valid credentials (403)
-- or an unavailable key source (503) outranks a bad credential (401), which
-- outranks a missing one (401).
local cjson = require "cjson.safe"
local base64 = require "ngx.base64"
local lrucache = require "resty.lrucache"
local jwt = require "gwc.jwt"
local jwks = require "gwc.jwks"
local apikeys = require "gwc.apikeys"
local crypto = require "gwc.crypto"

local ngx = ngx
local var = ngx.var
local req_clear_header = ngx.req.clear_header
local req_set_header = ngx.req.set_header
local get_uri_args = ngx.req.get_uri_args
local get_headers = ngx.req.get_headers
local set_uri_args = ngx.req.set_uri_args
local unescape_uri = ngx.unescape_uri
local decode_base64 = ngx.decode_base64
local encode_base64url = base64.encode_base64url
local find = string.find
local sub = string.sub
local gsub = string.gsub
local lower = string.lower
local match = string.match
local concat = table.concat
local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local os_getenv = os.getenv
local encode_json = cjson.encode

local _M = { _VERSION = "0.1.0" }

local RANK = { [401] = 1, [403] = 3, [503] = 4 }
local MISSING = {
    jwt_missing = true, apikey_missing = true, basic_missing = true, mtls_required = true,
    authorizer_identity_missing = true,
}

local schemes = {}
local keep_claims = false

-- Token sources ------------------------------------------------------------

local function header_var(name)
    return "http_" .. gsub(lower(name), "-", "_")
end

-- A credential sent twice is refused (false): nginx's $arg_, $cookie_ and
-- (before 1.23) $http_ variables see only the first copy, while the
-- upstream may read the other one.
local function repeated_cookie(cookie, name)
    local first = find(cookie, name, 1, true)
    local count = 0
    while first do
        local before = first == 1 and "" or sub(cookie, first - 1, first - 1)
        if (before == "" or before == ";" or before == " ") and sub(cookie, first + #name, first + #name) == "=" then
            count = count + 1
            if count > 1 then
                return true
            end
        end
        first = find(cookie, name, first + 1, true)
    end
    return false
end

local function source_reader(source)
    local name = source.name
    if source["in"] == "query" then
        local v = "arg_" .. name
        return function()
            local value = var[v]
            if not value then
                return nil
            end
            if type(get_uri_args(100)[name]) == "table" then
                return false
            end
            return unescape_uri(value)
        end
    elseif source["in"] == "cookie" then
        local v = "cookie_" .. name
        return function()
            local value = var[v]
            if value and repeated_cookie(var.http_cookie, name) then
                return false
            end
            return value
        end
    end
    local v = header_var(name)
    local key = lower(name)
    if source.bearer then
        -- Returns the token and the raw header value, which keys the
        -- verified-token cache so that a hit needs no token extraction.
        return function(cached)
            local value = var[v]
            if not value then
                return nil
            end
            local hit = cached(value)
            if hit then
                return hit, value, true
            end
            -- The scheme name is case-insensitive (RFC 9110 11.1).
            local token = match(value, "^[Bb][Ee][Aa][Rr][Ee][Rr] +([^ ]+) *$")
            return token or false, value
        end
    end
    return function()
        local value = var[v]
        if value and type(get_headers(100)[key]) == "table" then
            return false
        end
        return value
    end
end

local function credential_remover(source)
    local name = source.name
    if source["in"] == "query" then
        return function()
            local args = get_uri_args(100)
            args[name] = nil
            set_uri_args(args)
        end
    elseif source["in"] == "cookie" then
        local pattern = "^%s*" .. gsub(name, "%p", "%%%0") .. "="
        return function()
            local cookie = var.http_cookie
            if not cookie then
                return
            end
            local kept = {}
            for part in cookie:gmatch("[^;]+") do
                if not find(part, pattern) then
                    kept[#kept + 1] = match(part, "^%s*(.-)%s*$")
                end
            end
            if #kept > 0 then
                req_set_header("Cookie", concat(kept, "; "))
            else
                req_clear_header("Cookie")
            end
        end
    end
    return function()
        req_clear_header(name)
    end
end

-- Scheme checkers ------------------------------------------------------------

local function header_value(value)
    local t = type(value)
    if t == "string" then
        return (gsub(value, "%c", ""))
    elseif t == "number" or t == "boolean" then
        return tostring(value)
    elseif t == "table" then
        if value[1] ~= nil then
            local parts = {}
            for i, v in ipairs(value) do
                parts[i] = type(v) == "string" and v or encode_json(v)
            end
            return (gsub(concat(parts, " "), "%c", ""))
        end
        return encode_json(value)
    end
    return nil
end

local function new_jwt(name, conf)
    local keys, err
    if conf.secret_env then
        local secret = os_getenv(conf.secret_env)
        if not secret or secret == "" then
            return nil, "environment variable " .. conf.secret_env .. " (HMAC secret) is empty or not passed with `env`"
        end
        local set = { keys = { { kty = "oct", k = encode_base64url(secret) } } }
        if conf.jwks then
            for _, key in ipairs(conf.jwks.keys) do
                set.keys[#set.keys + 1] = key
            end
        end
        keys, err = jwks.new({ name = name, keys = set })
    elseif conf.jwks then
        keys, err = jwks.new({ name = name, keys = conf.jwks })
    else
        keys, err = jwks.new({
            name = name, uri = conf.jwks_uri, discovery = conf.discovery,
            refresh = conf.refresh, min_refetch = conf.min_refetch, refetch_burst = conf.refetch_burst,
        })
    end
    if not keys then
        return nil, err
    end
    local verifier
    verifier, err = jwt.new({
        keys = keys, algorithms = conf.algorithms, issuer = conf.issuer,
        audiences = conf.audiences, leeway = conf.leeway, required_claims = conf.required_claims,
        max_token_bytes = conf.max_token_size, cache_size = conf.cache_size,
    })
    if not verifier then
        return nil, err
    end
    local read = source_reader(conf.source)
    local forward = {}
    for i, pair in ipairs(conf.forward_claims or {}) do
        forward[i] = { claim = pair[1], header = pair[2] }
    end
    local scheme = {
        kind = "jwt",
        challenge = 'Bearer realm="api"',
        hide = conf.hide and credential_remover(conf.source) or nil,
    }
    local function cached(key)
        return verifier:cached(key)
    end
    function scheme.check(scopes)
        local token, raw, hit = read(cached)
        if token == nil then
            return nil, 401, "jwt_missing"
        elseif token == false then
            return nil, 401, "jwt_malformed"
        end
        local claims, reason
        if hit then
            claims = token
        else
            claims, reason = verifier:verify(token, raw)
        end
        if not claims then
            return nil, reason == "jwks_unavailable" and 503 or 401, reason
        end
        if scopes[1] and not jwt.has_scopes(claims, scopes) then
            return nil, 403, "insufficient_scope"
        end
        return claims
    end
    local plan_claim = conf.plan_claim
    function scheme.apply(claims)
        if plan_claim then
            -- gwc.limits resolves it: an undeclared plan gets default_plan or a 403.
            local plan = claims[plan_claim]
            var.gw_plan = type(plan) == "string" and plan or ""
        end
        if keep_claims then
            ngx.ctx.gwc_claims = claims
        end
        for i = 1, #forward do
            local value = header_value(claims[forward[i].claim])
            if value then
                req_set_header(forward[i].header, value)
            end
        end
        local sub_claim = claims.sub
        return type(sub_claim) == "string" and sub_claim or nil
    end
    return scheme
end

local function new_apikey(conf)
    local read = source_reader(conf.source)
    local scheme = {
        kind = "apikey",
        challenge = 'ApiKey realm="api", in="' .. conf.source["in"] .. '", name="' .. conf.source.name .. '"',
        hide = conf.hide and credential_remover(conf.source) or nil,
    }
    function scheme.check()
        local key = read()
        if key == false then
            return nil, 401, "credentials_ambiguous"
        end
        local consumer, reason = apikeys.lookup(key)
        if not consumer then
            return nil, (reason == "apikey_disabled" or reason == "apikey_expired") and 403 or 401, reason
        end
        return consumer
    end
    function scheme.apply(consumer)
        var.gw_plan = consumer.plan
        return consumer.id
    end
    return scheme
end

local BASIC_CACHE_TTL = 300

local function new_basic(conf)
    local users = {}
    for username, hash in pairs(conf.users or {}) do
        local iterations, salt, expected = match(hash, "^pbkdf2%-sha256%$(%d+)%$([^$]+)%$([^$]+)$")
        salt, expected = decode_base64(salt or ""), decode_base64(expected or "")
        if not salt or not expected then
            return nil, "bad password hash for " .. username
        end
        users[username] = { iterations = tonumber(iterations), salt = salt, hash = expected }
    end
    -- PBKDF2 is slow on purpose; a verified header is remembered for a while
    -- so that a client's every request does not pay it again.
    local verified = lrucache.new(1000)
    local scheme = {
        kind = "basic",
        challenge = 'Basic realm="' .. conf.realm .. '", charset="UTF-8"',
        hide = conf.hide and credential_remover({ ["in"] = "header", name = "Authorization" }) or nil,
    }
    function scheme.check()
        local value = var.http_authorization
        if not value then
            return nil, 401, "basic_missing"
        end
        local encoded = match(value, "^[Bb][Aa][Ss][Ii][Cc] +([A-Za-z0-9+/=]+) *$")
        if not encoded then
            return nil, 401, "basic_invalid"
        end
        local username = verified:get(value)
        if username then
            return username
        end
        local decoded = decode_base64(encoded)
        local colon = decoded and find(decoded, ":", 1, true)
        if not colon then
            return nil, 401, "basic_invalid"
        end
        username = sub(decoded, 1, colon - 1)
        local user = users[username]
        if not user then
            return nil, 401, "basic_invalid"
        end
        local derived = crypto.pbkdf2_sha256(sub(decoded, colon + 1), user.salt, user.iterations, #user.hash)
        if not derived or not crypto.equal(derived, user.hash) then
            return nil, 401, "basic_invalid"
        end
        verified:set(value, username, BASIC_CACHE_TTL)
        return username
    end
    function scheme.apply(username)
        return username
    end
    return scheme
end

local function new_mtls(conf)
    local subject_header, fingerprint_header = conf.subject_header, conf.fingerprint_header
    local scheme = { kind = "mtls" }
    function scheme.check()
        local verdict = var.ssl_client_verify
        if verdict ~= "SUCCESS" then
            -- NONE (or no TLS at all): no certificate; FAILED:<why>: one that
            -- does not chain to client_ca, is expired or revoked.
            if verdict and verdict ~= "NONE" and verdict ~= "" then
                return nil, 401, "mtls_unverified"
            end
            return nil, 401, "mtls_required"
        end
        return true
    end
    function scheme.apply()
        local subject = var.ssl_client_s_dn
        req_set_header(subject_header, subject)
        req_set_header(fingerprint_header, var.ssl_client_fingerprint)
        return subject
    end
    return scheme
end

-- Loading ---------------------------------------------------------------------

-- data is access.json's "schemes"; runs in init_by_lua (the master).
-- Limits keyed by a claim read the verified claims after authentication;
-- only then does a request pay for ngx.ctx.
function _M.keep_claims(on)
    keep_claims = on == true
end

function _M.claims()
    return keep_claims and ngx.ctx.gwc_claims or nil
end

function _M.load(data)
    local out = {}
    for name, conf in pairs(data or {}) do
        local scheme, err
        if conf.kind == "jwt" then
            scheme, err = new_jwt(name, conf)
        elseif conf.kind == "apikey" then
            scheme, err = new_apikey(conf)
        elseif conf.kind == "basic" then
            scheme, err = new_basic(conf)
        elseif conf.kind == "mtls" then
            scheme, err = new_mtls(conf)
        else
            err = "unknown kind " .. tostring(conf.kind)
        end
        if not scheme then
            return nil, "security scheme " .. name .. ": " .. tostring(err)
        end
        out[name] = scheme
    end
    schemes = out
    return true
end

-- Turns an operation's requirement lists into checker references, and
-- precomputes its 401 challenges.
function _M.compile(requirements)
    local compiled, challenges, seen = {}, {}, {}
    for i, req in ipairs(requirements) do
        local entries = {}
        for j, pair in ipairs(req) do
            local scheme = schemes[pair[1]]
            if not scheme then
                return nil, "unknown scheme " .. tostring(pair[1])
            end
            entries[j] = { scheme = scheme, scopes = pair[2], name = pair[1] }
            if scheme.challenge and not seen[scheme.challenge] then
                seen[scheme.challenge] = true
                challenges[#challenges + 1] = scheme.challenge
            end
        end
        compiled[i] = entries
    end
    local invalid = {}
    for i, c in ipairs(challenges) do
        invalid[i] = find(c, "^Bearer") and (c .. ', error="invalid_token"') or c
    end
    return {
        requirements = compiled,
        challenge_missing = challenges[1] and concat(challenges, ", ") or nil,
        challenge_invalid = invalid[1] and concat(invalid, ", ") or nil,
        single = #compiled == 1 and #compiled[1] == 1,
    }
end

-- Request time ----------------------------------------------------------------

-- One header value listing every challenge: nginx before 1.23 keeps a single
-- WWW-Authenticate field, and RFC 9110 allows a comma-separated list.
local function challenge_for(policy, status, reason, scopes)
    if status == 401 then
        if MISSING[reason] then
            return policy.challenge_missing
        end
        return policy.challenge_invalid
    end
    if reason == "insufficient_scope" then
        return 'Bearer realm="api", error="insufficient_scope", scope="' .. concat(scopes or {}, " ") .. '"'
    end
    return nil
end

local function accept(entries, identities)
    local consumer, consumer_scheme
    for j = 1, #entries do
        local scheme = entries[j].scheme
        local who = scheme.apply(identities[j])
        if who and not consumer then
            consumer, consumer_scheme = who, entries[j].name
        end
        if scheme.hide then
            scheme.hide()
        end
    end
    if consumer then
        var.gw_consumer = consumer
        -- The scheme that named it: a JWT sub and an API key id may be equal
        -- strings for different clients (the response cache keys on both).
        var.gw_consumer_scheme = consumer_scheme
    end
end

-- Returns nil when a requirement is met, else status, reason and the
-- WWW-Authenticate value(s).
function _M.check(policy)
    local reqs = policy.requirements
    if policy.single then
        local entry = reqs[1][1]
        local identity, status, reason = entry.scheme.check(entry.scopes)
        if identity then
            accept(reqs[1], { identity })
            return nil
        end
        return status, reason, challenge_for(policy, status, reason, entry.scopes)
    end
    local best_status, best_reason, best_scopes, best_rank = 401, "credentials_missing", nil, 0
    for i = 1, #reqs do
        local entries = reqs[i]
        local identities = {}
        local met = true
        for j = 1, #entries do
            local entry = entries[j]
            local identity, status, reason = entry.scheme.check(entry.scopes)
            if not identity then
                local rank = RANK[status] or 1
                if status == 401 and not MISSING[reason] then
                    rank = 2
                end
                if rank > best_rank then
                    best_status, best_reason, best_scopes, best_rank = status, reason, entry.scopes, rank
                end
                met = false
                break
            end
            identities[j] = identity
        end
        if met then
            accept(entries, identities)
            return nil
        end
    end
    return best_status, best_reason, challenge_for(policy, best_status, best_reason, best_scopes)
end

_M.init_worker = jwks.init_worker

return _M
