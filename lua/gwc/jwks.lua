-- JSON Web Key Sets: inline keys, or keys fetched from a JWKS URI or an
-- OpenID Connect discovery document and shared by the workers of a node.
--
-- A fetched document lives in the shared dict as raw JSON plus a version
-- counter; each worker re-parses it only when the version moves, so keys
-- are parsed once per worker per rotation and never on the request path.
-- An unknown kid may mean the issuer rotated keys, so it may trigger a
-- refetch. Refetches spend a node-wide budget (a token bucket: a burst of
-- refetch_burst, then one per min_refetch seconds), so a rotation that comes
-- right after a few garbage tokens is still picked up at once, while a
-- flood of made-up kids cannot turn into a flood of downloads.
local cjson = require "cjson.safe"
local base64 = require "ngx.base64"
local crypto = require "gwc.crypto"
local http_client = require "gwc.http_client"

local ngx = ngx
local ngx_now = ngx.now
local ngx_update_time = ngx.update_time
local ngx_sleep = ngx.sleep
local log = ngx.log
local WARN = ngx.WARN
local INFO = ngx.INFO
local decode_json = cjson.decode
local decode_base64url = base64.decode_base64url
local gsub = string.gsub
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local type = type
local tostring = tostring
local setmetatable = setmetatable
local math_min = math.min
local math_floor = math.floor

local _M = { _VERSION = "0.1.0" }

local ALGS_BY_KTY = {
    RSA = { "RS256", "RS384", "RS512", "PS256", "PS384", "PS512" },
    oct = { "HS256", "HS384", "HS512" },
}

-- Every set of this worker with remote keys, for the refresh timer. Weak,
-- so a set nobody references any more stops being refreshed.
local remote_sets = setmetatable({}, { __mode = "k" })
local worker_started = false

local function b64(value)
    if type(value) ~= "string" or value == "" then
        return nil
    end
    local out = decode_base64url(value)
    if not out then
        -- Some issuers pad their JWK members; keys are not attacker input.
        out = decode_base64url((gsub(value, "=+$", "")))
    end
    return out
end

-- A usable key record from one JWK, or nil, why not, and whether that is
-- expected (a key meant for something else, skipped even when strict).
local function parse_jwk(jwk)
    if type(jwk) ~= "table" then
        return nil, "key is not an object"
    end
    if jwk.use ~= nil and jwk.use ~= "sig" then
        return nil, "use is not sig", true
    end
    if type(jwk.key_ops) == "table" then
        local verify = false
        for _, op in ipairs(jwk.key_ops) do
            if op == "verify" then
                verify = true
            end
        end
        if not verify then
            return nil, "key_ops without verify", true
        end
    end
    local kid = jwk.kid
    if kid ~= nil and type(kid) ~= "string" then
        return nil, "kid is not a string"
    end
    local kty = jwk.kty
    local key, err, algs
    if kty == "RSA" then
        key, err = crypto.rsa_key(b64(jwk.n), b64(jwk.e))
        algs = ALGS_BY_KTY.RSA
    elseif kty == "EC" then
        local curve = crypto.CURVES[jwk.crv]
        if not curve then
            return nil, "unsupported curve " .. tostring(jwk.crv)
        end
        key, err = crypto.ec_key(jwk.crv, b64(jwk.x), b64(jwk.y))
        algs = { curve.alg }
    elseif kty == "OKP" then
        if jwk.crv ~= "Ed25519" then
            return nil, "unsupported OKP curve " .. tostring(jwk.crv)
        end
        key, err = crypto.ed25519_key(b64(jwk.x))
        algs = { "EdDSA" }
    elseif kty == "oct" then
        key, err = crypto.hmac_key(b64(jwk.k))
        algs = ALGS_BY_KTY.oct
    else
        return nil, "unsupported kty " .. tostring(kty)
    end
    if not key then
        return nil, err
    end
    local usable = {}
    local alg = jwk.alg
    if alg ~= nil then
        -- The JWK pins its algorithm: nothing else may use it.
        if type(alg) ~= "string" or not key:supports(alg) then
            return nil, "alg " .. tostring(alg) .. " does not fit kty " .. kty
        end
        usable[alg] = true
    else
        for _, a in ipairs(algs) do
            usable[a] = true
        end
    end
    return { kid = kid, key = key, algs = usable }
end

-- Indexes: by_kid[kid][alg] and, for tokens without a kid, by_alg[alg] =
-- the keys usable for alg (only consulted when the set holds one key).
local function index(records)
    local by_kid, by_alg, count = {}, {}, 0
    for _, rec in ipairs(records) do
        count = count + 1
        for alg in pairs(rec.algs) do
            if rec.kid then
                local m = by_kid[rec.kid]
                if not m then
                    m = {}
                    by_kid[rec.kid] = m
                end
                if not m[alg] then
                    m[alg] = rec.key
                end
            end
            local list = by_alg[alg]
            if not list then
                list = { n = 0 }
                by_alg[alg] = list
            end
            list.n = list.n + 1
            list[list.n] = rec.key
        end
    end
    return by_kid, by_alg, count
end

-- strict: fail on any bad key (inline keys are configuration); otherwise
-- skip it with a warning (an issuer may publish keys we do not support).
local function parse_set(doc, name, strict)
    local list = doc
    if type(doc) == "table" and doc.keys ~= nil then
        list = doc.keys
    end
    if type(list) ~= "table" then
        return nil, "JWKS without a keys array"
    end
    local records = {}
    for i, jwk in ipairs(list) do
        local rec, err, other_use = parse_jwk(jwk)
        if rec then
            records[#records + 1] = rec
        elseif strict and not other_use then
            return nil, "key " .. i .. ": " .. err
        else
            log(INFO, "jwks ", name, ": ignoring key ", i, ": ", err)
        end
    end
    if #records == 0 then
        return nil, "JWKS holds no usable signing key"
    end
    return records
end

local Set = {}
Set.__index = Set

local function install(self, records)
    self.by_kid, self.by_alg, self.count = index(records)
end

-- Pick up a document another worker (or this one) stored in the shm.
local function sync(self)
    local shm = self.shm
    local ver = shm:get(self.k_ver)
    if not ver or ver == self.version then
        return false
    end
    local body = shm:get(self.k_doc)
    local doc = body and decode_json(body)
    local records, err = parse_set(doc, self.name, false)
    if not records then
        log(WARN, "jwks ", self.name, ": stored document unusable: ", err)
        self.version = ver
        return false
    end
    install(self, records)
    self.version = ver
    local iss = shm:get(self.k_iss)
    if iss then
        self.discovered_issuer = iss
    end
    return true
end

local function get_json(self, url)
    local res, err = http_client.request {
        url = url,
        timeout = self.timeout,
        max_body = self.max_body,
        ssl_verify = self.ssl_verify,
        headers = { Accept = "application/json" },
    }
    if not res then
        return nil, err
    end
    if res.status ~= 200 then
        return nil, url .. " answered " .. res.status
    end
    local doc = decode_json(res.body)
    if type(doc) ~= "table" then
        return nil, url .. " did not return a JSON object"
    end
    return doc, res.body
end

local function fetch(self)
    local shm = self.shm
    local uri = self.uri
    if self.discovery then
        local disc, body_or_err = get_json(self, self.discovery)
        local err
        if not disc then
            err = body_or_err
        else
            if type(disc.jwks_uri) ~= "string" then
                err = "discovery document without jwks_uri"
            else
                uri = disc.jwks_uri
                shm:set(self.k_uri, uri)
                if type(disc.issuer) == "string" then
                    shm:set(self.k_iss, disc.issuer)
                end
            end
        end
        if err then
            -- Keep going with the last jwks_uri we discovered, if any.
            uri = shm:get(self.k_uri)
            if not uri then
                return nil, err
            end
            log(WARN, "jwks ", self.name, ": discovery failed: ", err)
        end
    end
    local doc, body = get_json(self, uri)
    if not doc then
        return nil, body
    end
    local records, err = parse_set(doc, self.name, false)
    if not records then
        return nil, uri .. ": " .. err
    end
    if shm:get(self.k_doc) ~= body or not shm:get(self.k_ver) then
        local ok, serr = shm:set(self.k_doc, body)
        if ok then
            shm:incr(self.k_ver, 1, 0)
        else
            -- This worker still uses the keys; the others keep theirs.
            log(WARN, "jwks ", self.name, ": cannot share the document: ", serr)
        end
    end
    local iss = shm:get(self.k_iss)
    if iss then
        self.discovered_issuer = iss
    end
    install(self, records)
    self.version = shm:get(self.k_ver)
    return true
end

local function protected_fetch(self)
    local ok, res, err = pcall(fetch, self)
    if not ok then
        return nil, res
    end
    return res, err
end

-- Fetch now, whatever the schedule (startup, tests, an operator's hook).
function Set:refresh()
    if not self.remote then
        return true
    end
    local ok, err = protected_fetch(self)
    if not ok then
        log(WARN, "jwks ", self.name, ": fetch failed: ", err)
        return nil, err
    end
    -- The next periodic fetch is due a full period after this one.
    self.shm:set(self.k_sched, true, self.refresh_every)
    return true
end

-- The refetch budget of the node, a token bucket kept as one number (GCRA):
-- the time at which the bucket is full again. Capacity refetch_burst, one
-- token back every min_refetch seconds. Called only under the in-flight
-- lock, which makes this read-modify-write atomic across the workers.
local function take_budget(self)
    local shm = self.shm
    -- Workers compare times they each took: use the clock, not the time
    -- cached at the start of this worker's event-loop iteration.
    ngx_update_time()
    local now = ngx_now()
    local full_at = shm:get(self.k_budget)
    if type(full_at) ~= "number" or full_at < now then
        full_at = now
    end
    full_at = full_at + self.min_refetch
    if full_at - now > self.burst * self.min_refetch then
        return false
    end
    -- Not recorded (shm full): refuse, or the budget would not hold.
    return (shm:set(self.k_budget, full_at, full_at - now))
end

-- Fetches while holding the node-wide in-flight lock of this set, so at
-- most one fetch per set runs at a time. Fails with "busy" if another
-- request or worker holds it; budgeted: spend the refetch budget first.
local function fetch_alone(self, budgeted)
    local shm = self.shm
    local ok, err = shm:add(self.k_inflight, true, self.lock_ttl)
    if not ok then
        return nil, err == "exists" and "busy" or err
    end
    if budgeted and not take_budget(self) then
        shm:delete(self.k_inflight)
        return nil, "refetch budget spent"
    end
    ok, err = self:refresh()
    shm:delete(self.k_inflight)
    return ok, err
end

-- A request whose kid is unknown refetches if the budget allows. If a fetch
-- is already in flight it waits for that one instead, at most the fetch
-- timeout, so the first users of a rotated key are not refused while it
-- downloads; it starts none of its own afterwards, so a wave of concurrent
-- made-up kids costs one fetch. True if the keys may have changed.
local function refetch(self)
    local ok, err = fetch_alone(self, true)
    if ok then
        return true
    elseif err ~= "busy" then
        return false
    end
    local shm = self.shm
    local waited, step = 0, 0.005
    while waited < self.wait_limit and shm:get(self.k_inflight) do
        if not pcall(ngx_sleep, step) then
            break
        end
        waited = waited + step
        step = math_min(step * 2, 0.05)
    end
    -- The fetch may have been this worker's own, already installed, which
    -- sync() does not report: look the kid up again either way.
    sync(self)
    return true
end

local function lookup(self, kid, alg)
    if kid then
        local m = self.by_kid[kid]
        if m then
            local key = m[alg]
            if key then
                return key
            end
            return nil, "jwt_alg_not_allowed"
        end
        if self.count == 0 then
            return nil, "jwks_unavailable"
        end
        return nil, "jwt_unknown_kid"
    end
    -- Without a kid a token is unambiguous only when one key of the set can
    -- verify its alg. Keys are typed, so the others (an RSA key beside an
    -- HMAC secret, say) can never be tried for it.
    if self.count == 0 then
        return nil, "jwks_unavailable"
    end
    local list = self.by_alg[alg]
    if not list then
        return nil, "jwt_alg_not_allowed"
    elseif list[2] then
        return nil, "jwt_kid_required"
    end
    return list[1]
end

-- Whether a lookup failed for want of the key (which a fetch may bring).
local function missing(reason)
    return reason == "jwt_unknown_kid" or reason == "jwks_unavailable"
end

-- The key for a token's kid (nil if it has none) and alg, or nil and a
-- reason code (jwt_unknown_kid, jwt_kid_required, jwt_alg_not_allowed,
-- jwks_unavailable).
function Set:get(kid, alg)
    local key, reason = lookup(self, kid, alg)
    if key or not self.remote or not missing(reason) then
        return key, reason
    end
    -- Another worker may have fetched it already; if not, a refetch of our
    -- own, so that what an unknown kid costs does not depend on the worker.
    if sync(self) then
        key, reason = lookup(self, kid, alg)
        if key or not missing(reason) then
            return key, reason
        end
    end
    if refetch(self) then
        return lookup(self, kid, alg)
    end
    return nil, reason
end

-- Stops the background refresh of this set in this worker.
function Set:close()
    remote_sets[self] = nil
end

-- The issuer named by the discovery document, if any.
function Set:issuer()
    return self.discovered_issuer
end

function Set:key_count()
    return self.count
end

local function tick(self)
    sync(self)
    -- Whoever adds the schedule key does the periodic fetch for the node.
    if self.shm:add(self.k_sched, true, self.refresh_every) then
        local ok, err = fetch_alone(self, false)
        if err == "busy" then
            -- The fetch in flight schedules the next one if it succeeds;
            -- if it fails, this timer tries again a second later.
            self.shm:delete(self.k_sched)
        elseif not ok then
            -- Retry sooner than the full period after a failure.
            self.shm:set(self.k_sched, true, math_min(self.min_refetch, self.refresh_every))
        end
    end
end

local function tick_all(premature)
    if premature then
        return
    end
    -- A fetch yields, and sets may come and go meanwhile: walk a snapshot.
    local sets, n = {}, 0
    for set in pairs(remote_sets) do
        n = n + 1
        sets[n] = set
    end
    for i = 1, n do
        local set = sets[i]
        local ok, err = pcall(tick, set)
        if not ok then
            log(WARN, "jwks ", set.name, ": refresh error: ", err)
        end
    end
end

-- Starts the per-worker refresh of every remote set (from init_worker_by_lua).
-- Sets created later are picked up by the same timer.
function _M.init_worker()
    if worker_started then
        return true
    end
    local ok, err = ngx.timer.at(0, tick_all)
    if not ok then
        return nil, err
    end
    ok, err = ngx.timer.every(1, tick_all)
    if not ok then
        return nil, err
    end
    worker_started = true
    return true
end

local function positive(v, default)
    if v == nil then
        return default
    end
    if type(v) ~= "number" or v <= 0 then
        return nil
    end
    return v
end

-- conf: name, keys (a decoded JWKS) or uri or discovery, refresh (s),
-- min_refetch (s, the refill interval of the refetch budget), refetch_burst
-- (refetches allowed at once, 0 for none), timeout (ms), shm, ssl_verify
-- (default true), max_body.
function _M.new(conf)
    if type(conf) ~= "table" then
        return nil, "conf must be a table"
    end
    local name = conf.name
    if type(name) ~= "string" or name == "" then
        return nil, "name required"
    end
    local self = setmetatable({
        name = name,
        by_kid = {},
        by_alg = {},
        count = 0,
    }, Set)
    if conf.keys ~= nil then
        if conf.uri or conf.discovery then
            return nil, "keys excludes uri and discovery"
        end
        local records, err = parse_set(conf.keys, name, true)
        if not records then
            return nil, err
        end
        install(self, records)
        return self
    end
    local uri, discovery = conf.uri, conf.discovery
    if (uri == nil) == (discovery == nil) then
        return nil, "exactly one of keys, uri, discovery required"
    end
    for _, u in ipairs({ uri or discovery }) do
        local parsed, err = http_client.parse_url(u)
        if not parsed then
            return nil, err
        end
    end
    local refresh = positive(conf.refresh, 300)
    local min_refetch = positive(conf.min_refetch, 10)
    local timeout = positive(conf.timeout, 5000)
    if not refresh or not min_refetch or not timeout then
        return nil, "refresh, min_refetch and timeout must be positive numbers"
    end
    local burst = conf.refetch_burst
    if burst == nil then
        burst = 3
    elseif type(burst) ~= "number" or burst < 0 or burst ~= math_floor(burst) then
        return nil, "refetch_burst must be a whole number, 0 or more"
    end
    local shm_name = conf.shm or "gwc_jwks"
    local shm = ngx.shared[shm_name]
    if not shm then
        return nil, "lua_shared_dict " .. shm_name .. " is not defined"
    end
    self.remote = true
    self.uri = uri
    self.discovery = discovery
    self.refresh_every = refresh
    self.min_refetch = min_refetch
    self.burst = burst
    self.timeout = timeout
    -- A worker that dies mid-fetch must not keep the lock: it expires after
    -- the longest a fetch (discovery, then the key set) can take.
    self.lock_ttl = timeout / 1000 * 2 + 1
    self.wait_limit = timeout / 1000
    self.max_body = positive(conf.max_body, 512 * 1024)
    self.ssl_verify = conf.ssl_verify ~= false
    self.shm = shm
    -- The shm outlives a reload: a changed source must not reuse a document.
    local prefix = "jwks:" .. name .. ":" .. ngx.crc32_short(uri or discovery) .. ":"
    self.k_doc = prefix .. "doc"
    self.k_ver = prefix .. "ver"
    self.k_iss = prefix .. "iss"
    self.k_uri = prefix .. "uri"
    self.k_sched = prefix .. "sched"
    self.k_budget = prefix .. "budget"
    self.k_inflight = prefix .. "inflight"
    remote_sets[self] = true
    return self
end

-- Exposed for tests and for the compiler's key checks.
_M.parse_jwk = parse_jwk

return _M
