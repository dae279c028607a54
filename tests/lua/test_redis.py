"""gwc.redis against real redis-server processes: one server (password, db, TLS, outages) and a three-master Cluster
(routing, hash tags, ASK and MOVED during a slot migration)."""
import json
import random
import shutil
import threading
import time

import pytest

from support.lua_runner import LuaRunner
from support.redis_servers import RedisCluster, RedisServer, crc16, key_slot

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")

# Chunks get their parameters as P (decoded from JSON) and keep clients across runs in STORE, so a test can change
# the server between two runs and see what the same worker-level client does next.
_PRELUDE = """
local cjson = require "cjson.safe"
local redis = require "gwc.redis"
local P = cjson.decode([==[{params}]==])
local STORE = package.loaded["gwc.test_redis_store"] or {{}}
package.loaded["gwc.test_redis_store"] = STORE
"""


def run(runner, body, **params):
    return runner.run(_PRELUDE.format(params=json.dumps(params)) + body)


@pytest.fixture(scope="module")
def tls_server():
    with RedisServer(tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def lua(tls_server):
    """The runner trusts the TLS server's test CA (lua_ssl_trusted_certificate is an http-level directive)."""
    runner = LuaRunner(http_directives=[f"lua_ssl_trusted_certificate {tls_server.ca_path};", "lua_ssl_verify_depth 3;"])
    runner.start()
    yield runner
    runner.stop()


@pytest.fixture(scope="module")
def server():
    with RedisServer() as s:
        yield s


@pytest.fixture(scope="module")
def cluster():
    with RedisCluster(masters=3) as c:
        yield c


# ---------------------------------------------------------------------------------------------------------------
# Pure functions


def test_crc16_and_key_slot_vectors(lua):
    got = run(lua, """
        local c = require "gwc.redis_cluster"
        return {
            crc = c.crc16("123456789"),
            foo = c.key_slot("foo"),
            following = c.key_slot("{user1000}.following"),
            followers = c.key_slot("{user1000}.followers"),
            user1000 = c.key_slot("user1000"),
            empty_tag = c.key_slot("foo{}{bar}"),
            whole = c.key_slot("foo{}{bar}") == c.crc16("foo{}{bar}") % 16384,
            nested = c.key_slot("foo{{bar}}zap"),
            nested_tag = c.key_slot("{bar"),
            first_tag = c.key_slot("foo{bar}{zap}"),
            bar = c.key_slot("bar"),
            unclosed = c.key_slot("foo{bar"),
            number = c.key_slot(12345),
        }
    """)
    assert got["crc"] == 0x31C3 == crc16(b"123456789")
    assert got["foo"] == 12182
    assert got["following"] == got["followers"] == got["user1000"]
    assert got["whole"] is True
    assert got["nested"] == got["nested_tag"]
    assert got["first_tag"] == got["bar"]
    assert got["unclosed"] == key_slot("foo{bar")
    assert got["number"] == key_slot("12345")


def test_parse_url(lua):
    got = run(lua, """
        local out = {}
        for i, url in ipairs(P.urls) do
            local u, err = redis.parse_url(url)
            out[i] = u or { err = err }
        end
        return out
    """, urls=["redis://127.0.0.1", "rediss://u%40x:p%3Aw@cache.internal:6380/2", "redis://:secret@[::1]:7000/",
               "redis://secret@h", "http://h", "redis://h:99999", "redis://h/x"])
    assert got[0] == {"tls": False, "host": "127.0.0.1", "port": 6379, "db": 0}
    assert got[1] == {"tls": True, "host": "cache.internal", "port": 6380, "db": 2, "user": "u@x", "password": "p:w"}
    assert got[2] == {"tls": False, "host": "::1", "port": 7000, "db": 0, "password": "secret"}
    assert got[3]["password"] == "secret" and "user" not in got[3]
    assert "unsupported" in got[4]["err"]
    assert "port" in got[5]["err"]
    assert "database" in got[6]["err"]


def test_new_refuses_bad_conf(lua):
    got = run(lua, """
        local out = {}
        for i, conf in ipairs(P.confs) do
            local c, err = redis.new(conf)
            out[i] = err or "accepted"
        end
        return out
    """, confs=[{}, {"url": "redis://h", "pool": 0}, {"cluster": []}, {"cluster": ["redis://a/1"]},
                {"cluster": ["redis://a", "rediss://b"]}, {"url": "redis://h", "timeout": 50}])
    assert "url or cluster" in got[0]
    assert "pool" in got[1]
    assert "non-empty" in got[2]
    assert "database 0" in got[3]
    assert "mix" in got[4]
    assert got[5] == "accepted"


def test_script_digest(lua):
    got = run(lua, 'return redis.script("return 1")')
    assert got == {"source": "return 1", "sha": "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"}


# ---------------------------------------------------------------------------------------------------------------
# One server


def test_commands_and_reply_types(lua, server):
    value = "bin\r\nary\x00-" + "x" * 100000
    got = run(lua, """
        local c = assert(redis.new{ url = P.url })
        local out = {}
        out.set = { c:command({ "SET", "t:k", P.value }) }
        out.get_len = #(c:command({ "GET", "t:k" }))
        out.get_same = c:command({ "GET", "t:k" }) == P.value
        out.missing = c:command({ "GET", "t:missing" }) == ngx.null
        c:command({ "DEL", "t:n", "t:list" })
        out.incr = { c:command({ "INCRBY", "t:n", 41 }) }
        out.incrf = { c:command({ "INCRBYFLOAT", "t:f", 0.5 }) }
        c:command({ "RPUSH", "t:list", "a", "b", "c" })
        out.lrange = c:command({ "LRANGE", "t:list", 0, -1 })
        out.mget = c:command({ "MGET", "t:n", "t:missing" })
        out.mget_null = out.mget[2] == ngx.null
        out.empty = c:command({ "LRANGE", "t:nothing", 0, -1 })
        out.status = c:command({ "PING" })
        out.wrongtype = { c:command({ "INCR", "t:list" }) }
        out.unknown = { c:command({ "NOSUCHCOMMAND" }) }
        out.nested = c:command({ "EVAL", "return {1, {2, 'x'}, redis.error_reply('inner')}", 0 })
        out.stats = c:stats()
        return out
    """, url=server.url, value=value)
    assert got["set"] == ["OK"]
    assert got["get_len"] == len(value.encode()) and got["get_same"] is True
    assert got["missing"] is True
    assert got["incr"] == [41]
    assert got["incrf"][0] == "0.5"
    assert got["lrange"] == ["a", "b", "c"]
    assert got["mget"][0] == "41" and got["mget_null"] is True
    assert got["empty"] == {} or got["empty"] == []
    assert got["status"] == "PONG"
    assert got["wrongtype"][0] is None and got["wrongtype"][1].startswith("WRONGTYPE")
    assert got["unknown"][0] is None and got["unknown"][1].startswith("ERR unknown command")
    assert got["nested"][0] == 1 and got["nested"][1] == [2, "x"] and got["nested"][2] == [False, "ERR inner"]
    assert got["stats"]["errors"] == 0


def test_number_arguments_keep_their_precision(lua, server):
    got = run(lua, """
        local c = assert(redis.new{ url = P.url })
        c:command({ "SET", "t:float", 1733112345678.125 })
        c:command({ "SET", "t:int", 2^52 + 1 })
        return { c:command({ "GET", "t:float" }), c:command({ "GET", "t:int" }) }
    """, url=server.url)
    assert got == ["1733112345678.125", str(2**52 + 1)]


def test_password_auth_and_select_db():
    with RedisServer(password="s3cret pass") as s:
        s.call("ACL", "SETUSER", "alice", "on", ">alice-pw", "~*", "+@all")
        with LuaRunner() as runner:
            got = run(runner, """
                local out = {}
                local c = assert(redis.new{ url = P.url })
                out.set = { c:command({ "SET", "t:db", "three" }) }
                out.db = c:command({ "CLIENT", "INFO" })
                local o = assert(redis.new{ url = P.bare, password = P.password })
                out.override = { o:command({ "GET", "t:db" }) }
                local a = assert(redis.new{ url = P.alice })
                out.whoami = { a:command({ "ACL", "WHOAMI" }) }
                local none = assert(redis.new{ url = P.bare })
                out.noauth = { none:command({ "GET", "x" }) }
                return out
            """, url=f"redis://:s3cret%20pass@127.0.0.1:{s.port}/3", bare=f"redis://127.0.0.1:{s.port}",
                password="s3cret pass", alice=f"redis://alice:alice-pw@127.0.0.1:{s.port}")
            assert got["set"] == ["OK"]
            assert " db=3 " in got["db"]
            with s.connect() as conn:
                assert conn.call("GET", "t:db") is None
                conn.call("SELECT", 3)
                assert conn.call("GET", "t:db") == "three"
            assert got["override"] == [None]  # db 0 has no such key
            assert got["whoami"] == ["alice"]
            assert got["noauth"][0] is None and got["noauth"][1].startswith("NOAUTH")


def test_wrong_password_is_an_unavailable_error():
    with RedisServer(password="right") as s:
        with LuaRunner() as runner:
            got = run(runner, """
                local c = assert(redis.new{ url = P.url, error_interval = 60 })
                local res, err = c:command({ "PING" })
                local res2, err2 = c:command({ "PING" })
                return { res = res, err = err, err2 = err2, stats = c:stats() }
            """, url=f"redis://:wrong@127.0.0.1:{s.port}")
            assert got.get("res") is None
            assert got["err"].startswith("redis unavailable: ") and "WRONGPASS" in got["err"]
            assert "breaker open" in got["err2"]  # a refused AUTH does not hammer the server with new connections
            assert runner.nginx.read_error_log().count("WRONGPASS") == 1


def test_refused_select_runs_nothing(lua, server):
    server.call("DEL", "t:select")
    got = run(lua, """
        local c = assert(redis.new{ url = P.url, name = "select" })
        return { c:command({ "SET", "t:select", "db 0?" }) }
    """, url=server.url + "/99")  # redis-server has 16 databases
    assert got[0] is None and got[1].startswith("redis unavailable: handshake refused") and "DB index" in got[1]
    assert server.call("GET", "t:select") is None


def test_concurrent_calls_in_one_worker(lua, server):
    server.call("DEL", "t:conc")
    got = run(lua, """
        local c = assert(redis.new{ url = P.url, pool = 8 })
        local s = redis.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        local function worker(i)
            local sum = 0
            for j = 1, 20 do
                local res, err = c:eval(s, { "t:conc" }, { i })
                if not res then return nil, err end
                local echo = c:command({ "ECHO", "w" .. i .. ":" .. j })
                if echo ~= "w" .. i .. ":" .. j then return nil, "crossed reply " .. tostring(echo) end
                sum = sum + i
            end
            return sum
        end
        local threads = {}
        for i = 1, 50 do threads[i] = ngx.thread.spawn(worker, i) end
        local total, errs = 0, {}
        for i = 1, 50 do
            local ok, sum, err = ngx.thread.wait(threads[i])
            if sum then total = total + sum else errs[#errs + 1] = tostring(err) end
        end
        return { total = total, errs = table.concat(errs, "; "), final = c:command({ "GET", "t:conc" }) }
    """, url=server.url)
    assert got["errs"] == ""
    assert got["total"] == 20 * sum(range(1, 51)) == int(got["final"])


def test_tls_with_test_ca(lua, tls_server):
    # nginx checks the peer's DNS names only (X509_check_host), never IP SANs: a URL holding an address needs
    # server_name, the certificate's DNS name.
    got = run(lua, """
        local by_address = assert(redis.new{ url = P.url })
        local c = assert(redis.new{ url = P.url, server_name = "localhost" })
        local out = { set = { c:command({ "SET", "t:tls", "yes" }) }, get = c:command({ "GET", "t:tls" }) }
        out.by_address = { by_address:command({ "PING" }) }
        local ids = {}
        for i = 1, 10 do ids[tostring(c:command({ "CLIENT", "ID" }))] = true end
        out.ids = 0
        for _ in pairs(ids) do out.ids = out.ids + 1 end
        return out
    """, url=tls_server.url)
    assert got["set"] == ["OK"] and got["get"] == "yes"
    assert got["by_address"][0] is None and got["by_address"][1].startswith("redis unavailable: TLS handshake")
    assert "certificate" in got["by_address"][1]
    assert got["ids"] == 1  # pooled TLS connections are reused without a new handshake


def test_tls_verification_failure_and_opt_out(lua):
    with RedisServer(tls=True) as untrusted:  # its own CA, which the runner does not trust
        got = run(lua, """
            local v = assert(redis.new{ url = P.url, server_name = "localhost" })
            local res, err = v:command({ "PING" })
            local n = assert(redis.new{ url = P.url, ssl_verify = false })
            return { err = err, unverified = n:command({ "PING" }) }
        """, url=untrusted.url)
        assert got["err"].startswith("redis unavailable: TLS handshake") and "certificate" in got["err"]
        assert got["unverified"] == "PONG"


def test_evalsha_with_noscript_fallback(lua, server):
    server.call("SCRIPT", "FLUSH")
    server.call("CONFIG", "RESETSTAT")
    got = run(lua, """
        local c = assert(redis.new{ url = P.url })
        local s = redis.script("redis.call('SET', KEYS[1], ARGV[1]) return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2}")
        local out = { first = { c:eval(s, { "t:script" }, { "v1", 21 }) } }
        out.second = { c:eval(s, { "t:script" }, { "v2", 1 }) }
        return out
    """, url=server.url)
    assert got["first"] == [["t:script", "v1", 42]]
    assert got["second"] == [["t:script", "v2", 2]]
    server.call("SCRIPT", "FLUSH")
    got = run(lua, """
        local c = assert(redis.new{ url = P.url })
        local s = redis.script("redis.call('SET', KEYS[1], ARGV[1]) return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2}")
        local bad = redis.script("return redis.call('NOSUCH')")
        return { third = { c:eval(s, { "t:script" }, { "v3", 2 }) }, bad = { c:eval(bad, {}, {}) } }
    """, url=server.url)
    assert got["third"] == [["t:script", "v3", 4]]
    assert got["bad"][0] is None and "Unknown Redis command" in got["bad"][1]
    stats = server.call("INFO", "commandstats")
    evals = int(stats.split("cmdstat_eval:calls=")[1].split(",")[0])
    assert evals == 3  # once after each flush, plus the failing script's first run; never on a cached script
    assert server.call("GET", "t:script") == "v3"


def test_connection_reused_across_calls(lua, server):
    before = _connections_received(server)
    got = run(lua, """
        local c = assert(redis.new{ url = P.url, pool = 4 })
        local ids, n = {}, 0
        for i = 1, 50 do
            local id = assert(c:command({ "CLIENT", "ID" }))
            if not ids[id] then ids[id] = true; n = n + 1 end
        end
        return { distinct = n, stats = c:stats() }
    """, url=server.url)
    after = _connections_received(server)
    assert got["distinct"] == 1
    assert got["stats"]["connects"] <= 1  # 0 when an earlier test left a pooled connection
    assert after - before <= 2  # at most one for the Lua client, one for reading the counter


def _connections_received(server):
    info = server.call("INFO", "stats")
    return int(info.split("total_connections_received:")[1].split()[0])


def test_outage_breaker_one_log_line_and_recovery(lua):
    with RedisServer() as s:
        mark = lua.log_mark()
        got = run(lua, """
            STORE.outage = assert(redis.new{ url = P.url, breaker = 0.3, error_interval = 60, name = "outage" })
            return { STORE.outage:command({ "SET", "t:o", "1" }) }
        """, url=s.url)
        assert got == ["OK"]
        s.stop()
        got = run(lua, """
            local c = STORE.outage
            local errs = {}
            for i = 1, 20 do
                local res, err = c:command({ "GET", "t:o" })
                errs[i] = err or "no error"
            end
            return { errs = errs, stats = c:stats() }
        """)
        assert got["errs"][0].startswith("redis unavailable: ")
        assert "connect to" in got["errs"][0] or "reading from" in got["errs"][0]
        assert all(e.startswith("redis unavailable: breaker open") for e in got["errs"][1:])
        assert got["stats"]["errors"] == 20 and got["stats"]["fast_fails"] == 19
        log = lua.nginx.read_error_log()[mark:]
        assert len([l for l in log.splitlines() if "gwc.redis outage" in l]) == 1
        s.start()
        got = run(lua, """
            local c = STORE.outage
            ngx.sleep(0.35)  -- past the breaker interval: the next call is the probe
            local res, err = c:command({ "GET", "t:o" })
            local again = c:command({ "SET", "t:o", "2" })
            return { empty = res == ngx.null, err = err, again = again, stats = c:stats() }
        """)
        assert got.get("err") is None and got["empty"] is True  # the restarted server has no data
        assert got["again"] == "OK"
        assert got["stats"]["errors"] == 20


def test_error_log_repeats_with_the_count_after_the_interval(lua):
    port = RedisServer().port  # nothing listens there
    mark = lua.log_mark()
    run(lua, """
        local c = assert(redis.new{ url = P.url, breaker = 0, error_interval = 0.2, name = "throttle" })
        for i = 1, 5 do c:command({ "PING" }) end
        ngx.sleep(0.25)
        for i = 1, 3 do c:command({ "PING" }) end
    """, url=f"redis://127.0.0.1:{port}")
    lines = [l for l in lua.nginx.read_error_log()[mark:].splitlines() if "gwc.redis throttle" in l]
    assert len(lines) == 2
    assert "(1 failed call(s)" in lines[0] and "(5 failed call(s)" in lines[1]


def test_timeout_is_an_unavailable_error(lua):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts (in the kernel backlog) and never answers
    try:
        got = run(lua, """
            local c = assert(redis.new{ url = P.url, timeout = 100, name = "silent" })
            return { c:command({ "PING" }) }
        """, url=f"redis://127.0.0.1:{listener.getsockname()[1]}")
    finally:
        listener.close()
    assert got[0] is None and got[1].startswith("redis unavailable: reading from") and "timeout" in got[1]


# ---------------------------------------------------------------------------------------------------------------
# Cluster


def test_cluster_slots_agree_with_the_server(lua, cluster):
    rng = random.Random(9)
    keys = [f"k{rng.random()}" for _ in range(100)] + [f"{{t{i}}}.x" for i in range(20)] + ["a{}b", "{}", "{{a}}"]
    got = run(lua, """
        local out = {}
        for i, k in ipairs(P.keys) do out[i] = redis.key_slot(k) end
        return out
    """, keys=keys)
    node = cluster.nodes[0]
    assert got == [node.call("CLUSTER", "KEYSLOT", k) for k in keys]


def test_cluster_keys_across_all_masters(lua, cluster):
    keys = [f"spread:{i}" for i in range(300)]
    got = run(lua, """
        local c = assert(redis.new{ cluster = P.seeds })
        local errs = {}
        for _, k in ipairs(P.keys) do
            local res, err = c:command({ "SET", k, "v-" .. k }, k)
            if err then errs[#errs + 1] = err end
        end
        local back = {}
        for i, k in ipairs(P.keys) do back[i] = c:command({ "GET", k }, k) end
        return { errs = table.concat(errs, "; "), back = back, stats = c:stats() }
    """, seeds=cluster.seeds, keys=keys)
    assert got["errs"] == ""
    assert got["back"] == [f"v-{k}" for k in keys]
    assert got["stats"]["redirects"] == 0  # the slot map routes every key to its owner first time
    per_master = {n.port: 0 for n in cluster.nodes}
    for k in keys:
        owner = cluster.key_owner(k)
        assert owner.call("GET", k) == f"v-{k}"
        per_master[owner.port] += 1
    assert all(count > 0 for count in per_master.values())


def test_cluster_hash_tags_share_a_slot_and_a_script(lua, cluster):
    got = run(lua, """
        local c = assert(redis.new{ cluster = P.seeds })
        local s = redis.script("redis.call('SET', KEYS[1], ARGV[1]) redis.call('SET', KEYS[2], ARGV[1]) return #KEYS")
        local out = { tagged = { c:eval(s, { "{user1000}.following", "{user1000}.followers" }, { "x" }) } }
        out.cross = { c:eval(s, { "user1000.following", "user1000.followers" }, { "x" }) }
        return out
    """, seeds=cluster.seeds)
    assert got["tagged"] == [2]
    assert got["cross"][0] is None and "CROSSSLOT" in got["cross"][1]  # a server error, not a crash
    assert cluster.key_owner("{user1000}.followers").call("GET", "{user1000}.followers") == "x"


def test_cluster_ask_then_moved_during_a_migration(lua, cluster):
    key = "migrating:{m1}"
    slot = key_slot(key)
    cluster.call_for_key(key, "SET", key, "0")
    source = cluster.owner(slot)
    target = cluster.other_master(slot)
    body = """
        STORE.migrate = STORE.migrate or assert(redis.new{ cluster = P.seeds })
        local c = STORE.migrate
        local s = redis.script("return redis.call('INCR', KEYS[1])")
        local out, errs = {}, {}
        for i = 1, 10 do
            local res, err = c:eval(s, { P.key })
            out[i] = res
            if err then errs[#errs + 1] = err end
        end
        return { out = out, errs = table.concat(errs, "; "), stats = c:stats() }
    """
    first = run(lua, body, seeds=cluster.seeds, key=key)
    assert first["errs"] == "" and first["out"] == list(range(1, 11))

    migration = cluster.begin_migration(slot, target)
    migration.migrate_keys()  # the key now lives on the target; the source answers ASK
    asked = run(lua, body, seeds=cluster.seeds, key=key)
    assert asked["errs"] == "" and asked["out"] == list(range(11, 21))
    assert asked["stats"]["asks"] - first["stats"]["asks"] >= 10  # ASK is one-shot: every call is redirected

    migration.finish()  # the source now answers MOVED; the client remembers the new owner
    moved = run(lua, body, seeds=cluster.seeds, key=key)
    assert moved["errs"] == "" and moved["out"] == list(range(21, 31))
    assert moved["stats"]["moved"] - asked["stats"]["moved"] >= 1
    assert moved["stats"]["asks"] == asked["stats"]["asks"]
    assert moved["stats"]["redirects"] - asked["stats"]["redirects"] <= 2  # not one per call
    assert target.call("GET", key) == "30" and source is not target


def test_cluster_slot_moved_while_calls_run(lua, cluster):
    key, stop = "busy:{b7}", "busy:stop"
    slot = key_slot(key)
    cluster.call_for_key(key, "DEL", key)
    cluster.call_for_key(stop, "DEL", stop)
    result = {}

    def loop():
        try:
            # Runs until the test has finished the migration (the stop key), so the move happens mid-loop.
            result["got"] = run(lua, """
                local c = assert(redis.new{ cluster = P.seeds })
                local out, errs = {}, {}
                for i = 1, 5000 do
                    local res, err = c:command({ "INCR", P.key }, P.key)
                    out[i] = res or false
                    if err then errs[#errs + 1] = err end
                    if c:command({ "EXISTS", P.stop }, P.stop) == 1 then break end
                    ngx.sleep(0.002)
                end
                return { out = out, errs = table.concat(errs, "; "), stats = c:stats() }
            """, seeds=cluster.seeds, key=key, stop=stop)
        except Exception as e:  # reported by the assertion below
            result["error"] = e

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not cluster.call_for_key(key, "EXISTS", key):
            time.sleep(0.01)
        target = cluster.other_master(slot)
        migration = cluster.begin_migration(slot, target)
        time.sleep(0.1)
        migration.migrate_keys()
        time.sleep(0.1)
        migration.finish()
        time.sleep(0.1)
    finally:
        cluster.call_for_key(stop, "SET", stop, "1")
        thread.join(timeout=60)
    assert "error" not in result, result.get("error")
    got = result["got"]
    assert got["errs"] == ""
    n = len(got["out"])
    assert n < 5000 and got["out"] == list(range(1, n + 1))
    assert got["stats"]["asks"] > 0 and got["stats"]["moved"] > 0
    assert target.call("GET", key) == str(n)


def test_cluster_moved_range_and_background_refresh(lua, cluster):
    keys = [k for k in (f"range:{i}" for i in range(2000)) if key_slot(k) < 40][:10]
    target = cluster.owner(16383)
    got = run(lua, """
        STORE.range = assert(redis.new{ cluster = P.seeds })
        for _, k in ipairs(P.keys) do assert(STORE.range:command({ "SET", k, "1" }, k)) end
        return STORE.range:stats()
    """, seeds=cluster.seeds, keys=keys)
    refreshes_before = got["refreshes"]
    cluster.move_slots(0, 39, target)
    got = run(lua, """
        local c = STORE.range
        local errs = {}
        for _, k in ipairs(P.keys) do
            local res, err = c:command({ "INCR", k }, k)
            if res ~= 2 then errs[#errs + 1] = tostring(err) end
        end
        ngx.sleep(0.2)  -- the background CLUSTER SLOTS the first MOVED scheduled
        local after = c:stats()
        for _, k in ipairs(P.keys) do c:command({ "GET", k }, k) end
        return { errs = table.concat(errs, "; "), after = after, final = c:stats() }
    """, keys=keys)
    assert got["errs"] == ""
    assert got["after"]["refreshes"] > refreshes_before
    assert got["final"]["redirects"] == got["after"]["redirects"]  # the refreshed map routes them all directly


def test_cluster_master_down_fails_fast_for_its_slots_only(lua):
    with RedisCluster() as c:
        down = c.nodes[1]
        key_down = next(k for k in (f"d{i}" for i in range(1000)) if c.key_owner(k) is down)
        key_up = next(k for k in (f"u{i}" for i in range(1000)) if c.key_owner(k) is not down)
        run(lua, """
            STORE.partial = assert(redis.new{ cluster = P.seeds, breaker = 5, name = "partial" })
            return { STORE.partial:command({ "SET", P.up, "1" }, P.up) }
        """, seeds=c.seeds, up=key_up)
        down.stop()
        got = run(lua, """
            local cl = STORE.partial
            return { down = { cl:command({ "GET", P.down }, P.down) }, again = { cl:command({ "GET", P.down }, P.down) },
                     up = { cl:command({ "GET", P.up }, P.up) } }
        """, down=key_down, up=key_up)
        assert got["down"][0] is None and got["down"][1].startswith("redis unavailable: ")
        assert "breaker open" in got["again"][1]
        assert got["up"] == ["1"]


def test_cluster_failover_refreshes_the_slot_map(lua):
    with RedisCluster() as c:
        master = c.nodes[0]
        key = next(k for k in (f"f{i}" for i in range(1000)) if c.key_owner(k) is master)
        replica = c.add_replica(master)
        got = run(lua, """
            STORE.failover = assert(redis.new{ cluster = P.seeds, name = "failover" })
            return { STORE.failover:command({ "SET", P.key, "before" }, P.key) }
        """, seeds=c.seeds, key=key)
        assert got == ["OK"]
        assert master.call("WAIT", 1, 5000) == 1
        master.stop()
        c.failover(replica)
        got = run(lua, """
            local cl = STORE.failover
            local first = { cl:command({ "GET", P.key }, P.key) }  -- the old master: down, and a refresh is due
            ngx.sleep(0.3)
            local second = { cl:command({ "GET", P.key }, P.key) }
            return { first = first, second = second, stats = cl:stats() }
        """, key=key)
        assert got["first"][0] is None and got["first"][1].startswith("redis unavailable: ")
        assert got["second"] == ["before"]
        assert got["stats"]["refreshes"] >= 2


def test_cluster_concurrent_first_calls_share_one_slot_fetch(lua, cluster):
    got = run(lua, """
        local c = assert(redis.new{ cluster = P.seeds })
        local function worker(i)
            return c:command({ "SET", "conc:" .. i, i }, "conc:" .. i)
        end
        local threads = {}
        for i = 1, 30 do threads[i] = ngx.thread.spawn(worker, i) end
        local errs = {}
        for i = 1, 30 do
            local ok, res, err = ngx.thread.wait(threads[i])
            if res ~= "OK" then errs[#errs + 1] = tostring(err) end
        end
        return { errs = table.concat(errs, "; "), stats = c:stats() }
    """, seeds=cluster.seeds)
    assert got["errs"] == ""
    assert got["stats"]["refreshes"] == 1


def test_cluster_unserved_slot_is_unavailable(lua):
    with RedisCluster() as c:
        key = "orphan"
        for n in c.nodes:
            n.call("CLUSTER", "DELSLOTS", key_slot(key))
        got = run(lua, """
            local cl = assert(redis.new{ cluster = P.seeds, name = "unserved" })
            local res, err = cl:command({ "GET", P.key }, P.key)
            local ok_other = cl:command({ "SET", P.other, "1" }, P.other)
            return { err = err, other = ok_other, stats = cl:stats() }
        """, seeds=c.seeds, key=key, other="not-orphan")
        assert got["err"].startswith("redis unavailable: CLUSTERDOWN")
        assert got["other"] == "OK"
