-- Our Redis client (RESP2 over cosockets) for the gateway's fleet-wide state:
-- one server (redis:// or rediss://) or a Cluster (seed URLs).
--
-- A client is made once, usually in init (it opens nothing then), and each
-- worker inherits its own copy: the breaker, the error-log throttle and the
-- Cluster slot map are per worker by construction. Every call returns
-- `res, err`; nothing here throws. Transport failures come back as
-- "redis unavailable: ..." so callers can tell them from server error replies.
local cluster = require "gwc.redis_cluster"

local ngx = ngx
local tcp = ngx.socket.tcp
local ngx_now = ngx.now
local ngx_log = ngx.log
local ERR = ngx.ERR
local null = ngx.null
local timer_at = ngx.timer.at
local ngx_sleep = ngx.sleep
local unescape_uri = ngx.unescape_uri
local sha1_bin = ngx.sha1_bin
local byte = string.byte
local sub = string.sub
local find = string.find
local match = string.match
local format = string.format
local gsub = string.gsub
local concat = table.concat
local floor = math.floor
local tonumber = tonumber
local tostring = tostring
local type = type
local ipairs = ipairs
local pairs = pairs
local setmetatable = setmetatable

local key_slot = cluster.key_slot
local parse_redirect = cluster.parse_redirect

local ok, new_tab = pcall(require, "table.new")
if not ok then
    new_tab = function() return {} end
end

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

_M.key_slot = key_slot

local UNAVAILABLE = "redis unavailable: "
local MAX_REDIRECTS = 3
-- A burst of MOVED replies (a resharding) triggers one background CLUSTER
-- SLOTS per worker per this many seconds; each MOVED already fixes its slot.
local REFRESH_INTERVAL = 1

local DEFAULTS = {
    timeout = 200, pool = 32, keepalive_timeout = 60000, ssl_verify = true,
    breaker = 1, error_interval = 10, name = "redis",
}

---------------------------------------------------------------------------
-- RESP encoding into one scratch table: it is filled and concatenated with
-- no yield in between, so one table serves every coroutine of the worker.
local buf = new_tab(64, 0)

local function arg_string(v)
    if type(v) == "number" then
        if v == floor(v) and v > -9007199254740992 and v < 9007199254740992 then
            return format("%d", v)
        end
        return format("%.17g", v)
    end
    return tostring(v)
end

local function put(n, v)
    if type(v) ~= "string" then
        v = arg_string(v)
    end
    buf[n + 1] = "$"
    buf[n + 2] = #v
    buf[n + 3] = "\r\n"
    buf[n + 4] = v
    buf[n + 5] = "\r\n"
    return n + 5
end

local function encode_command(args)
    local count = #args
    buf[1] = "*"
    buf[2] = count
    buf[3] = "\r\n"
    local n = 3
    for i = 1, count do
        n = put(n, args[i])
    end
    return concat(buf, "", 1, n)
end
_M.encode_command = encode_command

-- EVAL / EVALSHA body numkeys key... arg...
local function encode_eval(verb, body, keys, args)
    local nkeys, nargs = #keys, args and #args or 0
    buf[1] = "*"
    buf[2] = 3 + nkeys + nargs
    buf[3] = "\r\n"
    local n = put(3, verb)
    n = put(n, body)
    n = put(n, nkeys)
    for i = 1, nkeys do
        n = put(n, keys[i])
    end
    for i = 1, nargs do
        n = put(n, args[i])
    end
    return concat(buf, "", 1, n)
end

local NO_KEYS = {}
local ASKING = encode_command({ "ASKING" })
local CLUSTER_SLOTS = encode_command({ "CLUSTER", "SLOTS" })

---------------------------------------------------------------------------
-- RESP decoding. Returns value; or nil, server error text; or nil, transport
-- error, true (the connection is unusable and must be closed).
local read_reply

local function read_array(sock, count)
    local items = new_tab(count, 0)
    for i = 1, count do
        local v, err, broken = read_reply(sock)
        if broken then
            return nil, err, true
        end
        if v == nil then
            -- An error inside an array (a script's redis.error_reply in a
            -- table): kept in place so the positions of the others hold.
            v = { false, err }
        end
        items[i] = v
    end
    return items
end

read_reply = function(sock)
    local line, err = sock:receive("*l")
    if not line then
        return nil, err, true
    end
    local prefix = byte(line)
    if prefix == 36 then -- $ bulk string
        local size = tonumber(sub(line, 2))
        if not size then
            return nil, "protocol error (bulk length)", true
        end
        if size < 0 then
            return null
        end
        local data
        data, err = sock:receive(size + 2)
        if not data then
            return nil, err, true
        end
        return sub(data, 1, size)
    elseif prefix == 58 then -- : integer
        return tonumber(sub(line, 2))
    elseif prefix == 43 then -- + status
        return sub(line, 2)
    elseif prefix == 45 then -- - error
        return nil, sub(line, 2)
    elseif prefix == 42 then -- * array
        local count = tonumber(sub(line, 2))
        if not count then
            return nil, "protocol error (array length)", true
        end
        if count < 0 then
            return null
        end
        return read_array(sock, count)
    end
    return nil, "protocol error (reply type)", true
end

---------------------------------------------------------------------------
-- URLs: redis[s]://[[user]:password@]host[:port][/db]

local function parse_url(url)
    if type(url) ~= "string" then
        return nil, "redis URL must be a string"
    end
    local scheme, rest = match(url, "^(rediss?)://(.+)$")
    if not scheme then
        return nil, "unsupported redis URL (want redis:// or rediss://): " .. url
    end
    local authority, path = match(rest, "^([^/?#]*)(.*)$")
    local user, password
    local at = find(authority, "@[^@]*$")
    if at then
        local userinfo = sub(authority, 1, at - 1)
        authority = sub(authority, at + 1)
        local colon = find(userinfo, ":", 1, true)
        if colon then
            user = unescape_uri(sub(userinfo, 1, colon - 1))
            password = unescape_uri(sub(userinfo, colon + 1))
        else
            -- AUTH needs a password; a lone userinfo can only be one
            -- (the redis://secret@host form of older clients).
            password = unescape_uri(userinfo)
        end
        if user == "" then
            user = nil
        end
        if password == "" then
            password = nil
        end
    end
    local host, port = match(authority, "^%[([^%]]+)%]:?(%d*)$")
    if not host then
        host, port = match(authority, "^([^:]+):?(%d*)$")
    end
    if not host then
        return nil, "bad host in redis URL"
    end
    port = tonumber(port) or 6379
    if port < 1 or port > 65535 then
        return nil, "bad port in redis URL"
    end
    local db = 0
    if path ~= "" and path ~= "/" then
        local digits = match(path, "^/(%d+)$")
        if not digits then
            return nil, "bad database in redis URL (want /<number>): " .. path
        end
        db = tonumber(digits)
    end
    return { tls = scheme == "rediss", host = host, port = port, user = user, password = password, db = db }
end
_M.parse_url = parse_url

---------------------------------------------------------------------------
-- Nodes: one per address, with its pool name and breaker state.

local function node_for(self, host, port)
    local addr = host .. ":" .. port
    local node = self.nodes[addr]
    if node then
        return node
    end
    node = {
        host = host, port = port, addr = addr,
        breaker_err = "breaker open for " .. addr,
        -- The pool is per (address, credentials, db, TLS settings): a pooled
        -- connection has already authenticated and selected the database.
        connect_opts = {
            pool = concat({ "gwc.redis", self.tls and "tls" or "tcp", tostring(self.ssl_verify),
                            self.server_name or "", addr, self.db, self.credentials_tag }, ":"),
            pool_size = self.pool,
        },
        failed = false,
        down_until = 0,
    }
    self.nodes[addr] = node
    return node
end

local function note_failure(self, err)
    self.errors = self.errors + 1
    self.unlogged = self.unlogged + 1
    local now = ngx_now()
    if now >= self.log_after then
        ngx_log(ERR, "gwc.redis ", self.name, ": ", err, " (", self.unlogged,
                " failed call(s) since the last report)")
        self.unlogged = 0
        self.log_after = now + self.error_interval
    end
end

local function unavailable(self, node, err, fast)
    if fast then
        self.fast_fails = self.fast_fails + 1
    else
        node.failed = true
        node.down_until = ngx_now() + self.breaker
    end
    err = UNAVAILABLE .. err
    note_failure(self, err)
    return nil, err
end

-- Replies of a server that is up but cannot serve the command now (loading
-- its data, a replica without its master, a slot no master serves): for the
-- caller the same as an outage, but the connection is fine, so no breaker.
local UNSERVED = { LOADING = true, MASTERDOWN = true, CLUSTERDOWN = true, TRYAGAIN = true }

local function unserved(err)
    return UNSERVED[match(err, "^%u+")] == true
end

local function not_serving(self, err)
    err = UNAVAILABLE .. err
    note_failure(self, err)
    return nil, err
end

-- TLS, then AUTH and SELECT, on a new connection. AUTH/SELECT get their own
-- round trip rather than riding in the command's write: had they been refused,
-- the command would already have run as the default user or in database 0.
local function handshake(self, sock, node)
    if self.tls then
        -- false: no session object back. When the handshake completes
        -- without yielding, ngx_lua 0.10.23 checks the certificate only
        -- afterwards: with nil, resty.core then asserts (throws); with false
        -- it returns true on a socket it has already closed, which
        -- getreusedtimes() reveals.
        local ok, err = sock:sslhandshake(false, self.server_name or node.host, self.ssl_verify)
        if not ok then
            return nil, "TLS handshake with " .. node.addr .. ": " .. tostring(err)
        end
        if not sock:getreusedtimes() then
            return nil, "TLS handshake with " .. node.addr .. ": refused after the handshake (certificate verification)"
        end
    end
    local hello = self.hello
    if not hello then
        return true
    end
    local ok, err = sock:send(hello)
    if not ok then
        return nil, "send to " .. node.addr .. ": " .. tostring(err)
    end
    for _ = 1, self.hello_replies do
        local res, broken
        res, err, broken = read_reply(sock)
        if res == nil then
            -- A refused AUTH or SELECT makes the server unusable for us,
            -- like an outage: breaker, throttled log, "redis unavailable".
            return nil, (broken and "reading from " or "handshake refused by ") .. node.addr .. ": " .. tostring(err)
        end
    end
    return true
end

-- One request on one (pooled) connection. Returns res, err, broken, fast:
-- broken says the transport failed (the caller opens the breaker), fast that
-- the breaker was open and nothing was sent.
local function exchange(self, node, req, asking)
    if node.failed then
        local now = ngx_now()
        if now < node.down_until then
            return nil, node.breaker_err, true, true
        end
        -- This call is the probe; the others fail fast until it answers.
        node.down_until = now + self.breaker
    end
    local sock = tcp()
    local timeout = self.timeout
    sock:settimeouts(timeout, timeout, timeout)
    local ok, err = sock:connect(node.host, node.port, node.connect_opts)
    if not ok then
        return nil, "connect to " .. node.addr .. ": " .. tostring(err), true
    end
    if sock:getreusedtimes() == 0 then
        self.connects = self.connects + 1
        ok, err = handshake(self, sock, node)
        if not ok then
            sock:close()
            return nil, err, true
        end
    end
    if asking then
        req = ASKING .. req
    end
    ok, err = sock:send(req)
    if not ok then
        sock:close()
        return nil, "send to " .. node.addr .. ": " .. tostring(err), true
    end
    local res, broken
    if asking then
        res, err, broken = read_reply(sock)
        if broken then
            sock:close()
            return nil, "reading from " .. node.addr .. ": " .. tostring(err), true
        end
        if res == nil then
            -- Its command reply follows; read it so the connection stays in step.
            read_reply(sock)
            sock:close()
            return nil, err
        end
    end
    res, err, broken = read_reply(sock)
    if broken then
        sock:close()
        return nil, "reading from " .. node.addr .. ": " .. tostring(err), true
    end
    sock:setkeepalive(self.keepalive_timeout, self.pool)
    if node.failed then
        node.failed = false
    end
    return res, err
end

---------------------------------------------------------------------------
-- Cluster slot map

local function slots_from(self, node)
    local res, err, broken, fast = exchange(self, node, CLUSTER_SLOTS)
    if broken then
        unavailable(self, node, err, fast)
        return nil, err
    elseif res == nil then
        return nil, err
    end
    local map, any = cluster.build_map(res, node.host, node_for, self)
    if not map then
        return nil, any
    end
    self.slots = map
    self.any_node = any
    self.refreshes = self.refreshes + 1
    return true
end

-- The seeds first, then every node learnt since: after a failover the seeds
-- may be the ones that are gone.
local function refresh_slots(self)
    local ok, err
    local seeds = self.seeds
    for i = 1, #seeds do
        ok, err = slots_from(self, seeds[i])
        if ok then
            return true
        end
    end
    for _, node in pairs(self.nodes) do
        if not node.seed then
            ok, err = slots_from(self, node)
            if ok then
                return true
            end
        end
    end
    return nil, UNAVAILABLE .. "no cluster node answered CLUSTER SLOTS (last: " .. tostring(err) .. ")"
end

local function refresh_timer(premature, self)
    if not premature then
        refresh_slots(self)
    end
    self.refreshing = false
end

local function schedule_refresh(self)
    local now = ngx_now()
    if self.refreshing or now < self.refresh_after then
        return
    end
    self.refreshing = true
    self.refresh_after = now + REFRESH_INTERVAL
    if not timer_at(0, refresh_timer, self) then
        self.refreshing = false
    end
end

-- The first call of a worker fetches the map; calls arriving meanwhile wait
-- for it (up to the timeout) instead of each fetching and building their own.
local function load_slots(self)
    if self.loading then
        local waited, limit = 0, self.timeout / 1000
        while self.loading and waited < limit do
            ngx_sleep(0.002)
            waited = waited + 0.002
        end
        if self.slots then
            return true
        end
    end
    self.loading = true
    local ok, err = refresh_slots(self)
    self.loading = false
    return ok, err
end

local function cluster_dispatch(self, req, routing_key)
    if not self.slots then
        local ok, err = load_slots(self)
        if not ok then
            return nil, err
        end
    end
    local node = routing_key ~= nil and self.slots[key_slot(routing_key) + 1] or self.any_node
    local asking = false
    for _ = 0, MAX_REDIRECTS do
        local res, err, broken, fast = exchange(self, node, req, asking)
        if broken then
            if not fast then
                -- A master that stops answering may have been failed over.
                schedule_refresh(self)
            end
            return unavailable(self, node, err, fast)
        end
        if res ~= nil then
            return res
        end
        local kind, slot, host, port = parse_redirect(err)
        if not kind then
            if unserved(err) then
                schedule_refresh(self)
                return not_serving(self, err)
            end
            return nil, err
        end
        self.redirects = self.redirects + 1
        node = node_for(self, host ~= "" and host or node.host, port)
        if kind == "MOVED" then
            self.moved = self.moved + 1
            self.slots[slot + 1] = node
            schedule_refresh(self)
            asking = false
        else
            self.asks = self.asks + 1
            asking = true
        end
    end
    return nil, "too many cluster redirections (more than " .. MAX_REDIRECTS .. ")"
end

local function dispatch(self, req, routing_key)
    if self.seeds then
        return cluster_dispatch(self, req, routing_key)
    end
    local node = self.node
    local res, err, broken, fast = exchange(self, node, req)
    if broken then
        return unavailable(self, node, err, fast)
    end
    if res == nil and unserved(err) then
        return not_serving(self, err)
    end
    return res, err
end

---------------------------------------------------------------------------
-- Public API

local function hex_byte(c)
    return format("%02x", byte(c))
end

local function hex(s)
    return (gsub(s, ".", hex_byte))
end

-- conf: url | cluster (seed URLs), password, username, timeout (ms), pool,
-- keepalive_timeout (ms), ssl_verify, server_name (TLS name to verify when
-- the URL holds an address), breaker (s), error_interval (s), name.
function _M.new(conf)
    if type(conf) ~= "table" then
        return nil, "redis: conf must be a table"
    end
    local urls = conf.cluster
    if urls ~= nil then
        if type(urls) ~= "table" or #urls == 0 then
            return nil, "redis: cluster must be a non-empty list of seed URLs"
        end
    elseif conf.url ~= nil then
        urls = { conf.url }
    else
        return nil, "redis: url or cluster is required"
    end
    local parsed = new_tab(#urls, 0)
    for i = 1, #urls do
        local u, err = parse_url(urls[i])
        if not u then
            return nil, "redis: " .. err
        end
        if i > 1 and u.tls ~= parsed[1].tls then
            return nil, "redis: cluster seeds mix redis:// and rediss://"
        end
        parsed[i] = u
    end
    local first = parsed[1]
    local self = {
        name = conf.name or DEFAULTS.name,
        tls = first.tls,
        ssl_verify = conf.ssl_verify ~= false,
        server_name = conf.server_name,
        timeout = conf.timeout or DEFAULTS.timeout,
        pool = conf.pool or DEFAULTS.pool,
        keepalive_timeout = conf.keepalive_timeout or DEFAULTS.keepalive_timeout,
        breaker = conf.breaker or DEFAULTS.breaker,
        error_interval = conf.error_interval or DEFAULTS.error_interval,
        db = first.db,
        nodes = {},
        errors = 0, fast_fails = 0, unlogged = 0, log_after = 0,
        redirects = 0, moved = 0, asks = 0, connects = 0, refreshes = 0,
        refreshing = false, refresh_after = 0,
    }
    for _, field in ipairs({ "timeout", "pool", "keepalive_timeout", "breaker", "error_interval" }) do
        local v = self[field]
        if type(v) ~= "number" or v < 0 or (field == "pool" and v < 1) then
            return nil, "redis: " .. field .. " must be a positive number"
        end
    end

    local user, password = conf.username, conf.password
    if password == nil then
        for i = 1, #parsed do
            if parsed[i].password then
                user, password = user or parsed[i].user, parsed[i].password
                break
            end
        end
    end
    if password ~= nil and type(password) ~= "string" then
        return nil, "redis: password must be a string"
    end
    local hello, replies = {}, 0
    if password and password ~= "" then
        replies = replies + 1
        hello[replies] = encode_command(user and { "AUTH", user, password } or { "AUTH", password })
    end
    if conf.cluster then
        if self.db ~= 0 then
            return nil, "redis: Cluster has only database 0"
        end
    elseif self.db ~= 0 then
        replies = replies + 1
        hello[replies] = encode_command({ "SELECT", self.db })
    end
    if replies > 0 then
        self.hello, self.hello_replies = concat(hello), replies
    end
    -- A digest in the pool name instead of the secret itself: pools of
    -- different credentials must not mix, and pool names reach debug logs.
    self.credentials_tag = password and hex(sha1_bin((user or "") .. "\0" .. password)) or "-"

    setmetatable(self, mt)
    if conf.cluster then
        local seeds = new_tab(#parsed, 0)
        for i = 1, #parsed do
            seeds[i] = node_for(self, parsed[i].host, parsed[i].port)
            seeds[i].seed = true
        end
        self.seeds = seeds
    else
        self.node = node_for(self, first.host, first.port)
    end
    return self
end

-- A script object, made once when a module loads: EVALSHA needs the digest.
function _M.script(source)
    if type(source) ~= "string" then
        return nil, "redis.script: source must be a string"
    end
    return { source = source, sha = hex(sha1_bin(source)) }
end

-- args: { "GET", "k" }. routing_key: the key whose slot picks the Cluster node
-- (ignored on one server; without it a Cluster call goes to any master).
function _M.command(self, args, routing_key)
    if type(args) ~= "table" or #args == 0 then
        return nil, "redis command: args must be a non-empty list"
    end
    return dispatch(self, encode_command(args), routing_key)
end

-- EVALSHA, then EVAL only when the server lacks the script (EVAL also caches
-- it there). In a Cluster every key must hash to the slot of keys[1].
function _M.eval(self, script, keys, args)
    if type(script) ~= "table" or not script.sha then
        return nil, "redis eval: script must come from redis.script()"
    end
    keys = keys or NO_KEYS
    local routing_key = keys[1]
    local res, err = dispatch(self, encode_eval("EVALSHA", script.sha, keys, args), routing_key)
    if res == nil and err and find(err, "NOSCRIPT", 1, true) == 1 then
        return dispatch(self, encode_eval("EVAL", script.source, keys, args), routing_key)
    end
    return res, err
end

function _M.stats(self)
    return {
        errors = self.errors, fast_fails = self.fast_fails, redirects = self.redirects,
        moved = self.moved, asks = self.asks, connects = self.connects, refreshes = self.refreshes,
    }
end

return _M
