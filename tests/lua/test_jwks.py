"""gwc.jwks and gwc.http_client against a real HTTP server: fetching, rotation, refetch limits, discovery."""
import collections
import json
import ssl
import tempfile
import threading
import uuid
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jose_util import claims, jwks_of, lua_value, mint, public_jwk
from support.certs import make_ca, make_server_cert


class JwksServer:
    """Serves configurable documents on a free loopback port and counts the requests per path."""

    def __init__(self, tls=False):
        self.routes = {}
        self.hits = collections.Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                with server.lock:
                    server.hits[path] += 1
                    route = server.routes.get(path)
                if route is None:
                    body, status, mode = b'{"error":"not found"}', 404, "length"
                else:
                    body, status, mode = route
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if mode == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 100):
                        piece = body[i:i + 100]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.write(b"0\r\n\r\n")
                elif mode == "close":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body)
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        scheme = "http"
        if tls:
            directory = Path(tempfile.mkdtemp(prefix="gwc-jwks-tls-"))
            _, ca_key, ca_cert = make_ca(directory)
            cert, key = make_server_cert(directory, ca_key, ca_cert, ["127.0.0.1"])
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.base = f"{scheme}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve(self, path, doc, status=200, mode="length"):
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        with self.lock:
            self.routes[path] = (body, status, mode)

    def count(self, path):
        with self.lock:
            return self.hits[path]


@pytest.fixture(scope="module")
def server():
    s = JwksServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run_with_set(lua, set_conf, body, tokens=()):
    """Creates a remote set and a verifier, then runs `body` (Lua) with `set`, `v`, `tokens` in scope."""
    chunk = f"""
        local jwks = require "gwc.jwks"
        local jwt = require "gwc.jwt"
        local cjson = require "cjson.safe"
        local input = {lua_value({"conf": set_conf, "tokens": list(tokens)})}
        local set, err = jwks.new(input.conf)
        if not set then return {{ error = err }} end
        local v = assert(jwt.new{{ keys = set, algorithms = {{ "RS256", "ES256" }} }})
        local tokens = input.tokens
        local function check(t)
            local c, reason = v:verify(t)
            return c and "ok" or reason
        end
        local result = (function() {body} end)()
        set:close()
        return result
    """
    result = lua.run(chunk)
    if isinstance(result, dict) and "error" in result:
        raise AssertionError(result["error"])
    return result


def test_fetches_jwks_over_http(lua, server):
    mark = lua.log_mark()
    path = f"/{unique('jwks')}"
    server.serve(path, jwks_of(public_jwk("rsa", 10, kid="k10")))
    token = mint("RS256", index=10, kid="k10")
    got = run_with_set(lua, {"name": unique("fetch"), "uri": server.base + path}, """
        local ok, err = set:refresh()
        return { ok = ok, err = err, count = set:key_count(), first = check(tokens[1]), again = check(tokens[1]) }
    """, [token])
    assert got == {"ok": True, "count": 1, "first": "ok", "again": "ok"}
    assert server.count(path) == 1
    assert lua.lua_errors(since=mark) == ""


def test_rotated_key_is_accepted_after_one_refetch(lua, server):
    path = f"/{unique('jwks')}"
    server.serve(path, jwks_of(public_jwk("rsa", 10, kid="old")))
    new_token = mint("RS256", index=11, kid="new")
    old_token = mint("RS256", index=10, kid="old")
    got = run_with_set(lua, {"name": unique("rotate"), "uri": server.base + path, "min_refetch": 30}, f"""
        assert(set:refresh())
        local before = check(tokens[2])
        -- The issuer rotates: the old key stays published next to the new one.
        local hc = require "gwc.http_client"
        assert(hc.request{{ url = "{server.base}/rotate{path}" }})
        local after = check(tokens[1])
        return {{ before = before, after = after, old = check(tokens[2]) }}
    """, [new_token, old_token])
    assert got == {"before": "ok", "after": "ok", "old": "ok"}
    # The initial fetch and exactly one refetch for the unknown kid.
    assert server.count(path) == 2


@pytest.fixture(autouse=True)
def rotation_hook(server):
    """GET /rotate/<path> makes <path> serve the old and the new key (so the Lua side can trigger it)."""
    original = server.httpd.RequestHandlerClass.do_GET

    def do_get(handler):
        if handler.path.startswith("/rotate/"):
            target = handler.path[len("/rotate"):]
            server.serve(target, jwks_of(public_jwk("rsa", 10, kid="old"), public_jwk("rsa", 11, kid="new")))
            handler.send_response(204)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        original(handler)

    server.httpd.RequestHandlerClass.do_GET = do_get
    yield
    server.httpd.RequestHandlerClass.do_GET = original


def test_flood_of_unknown_kids_spends_only_the_burst(lua, server):
    mark = lua.log_mark()
    path = f"/{unique('jwks')}"
    server.serve(path, jwks_of(public_jwk("rsa", 10, kid="k10")))
    tokens = [mint("RS256", index=10, kid=f"made-up-{i}") for i in range(200)]
    got = run_with_set(lua, {"name": unique("flood"), "uri": server.base + path, "min_refetch": 60, "refetch_burst": 2}, f"""
        assert(set:refresh())
        local results = {{}}
        local threads = {{}}
        -- Concurrent requests, as a worker would see them: one fetches, the
        -- others wait for it.
        for i = 1, #tokens do
            threads[i] = ngx.thread.spawn(check, tokens[i])
        end
        for i = 1, #threads do
            local ok, res = ngx.thread.wait(threads[i])
            results[res] = (results[res] or 0) + 1
        end
        local hc = require "gwc.http_client"
        local after_wave = hc.request{{ url = "{server.base}/count{path}" }}.body
        -- A second wave, one at a time: each refetches until the burst is spent.
        for i = 1, #tokens do
            local r = check(tokens[i])
            results[r] = (results[r] or 0) + 1
        end
        return {{ results = results, after_wave = tonumber(after_wave) }}
    """, tokens)
    assert got["results"] == {"jwt_unknown_kid": 400}
    assert got["after_wave"] == 2, "the concurrent wave cost more than one fetch"
    assert server.count(path) == 3  # the initial fetch, then the burst of 2
    assert lua.lua_errors(since=mark) == ""


@pytest.fixture(autouse=True)
def count_hook(server):
    """GET /count/<path> answers how often <path> was fetched (so the Lua side can read it mid-run)."""
    original = server.httpd.RequestHandlerClass.do_GET

    def do_get(handler):
        if handler.path.startswith("/count/"):
            body = str(server.count(handler.path[len("/count"):])).encode()
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return
        original(handler)

    server.httpd.RequestHandlerClass.do_GET = do_get
    yield
    server.httpd.RequestHandlerClass.do_GET = original


@pytest.mark.parametrize("garbage", [1, 2])
def test_rotation_right_after_garbage_tokens_is_accepted_at_once(lua, server, garbage):
    path = f"/{unique('jwks')}"
    server.serve(path, jwks_of(public_jwk("rsa", 10, kid="old")))
    new_token = mint("RS256", index=11, kid="new")
    junk = [mint("RS256", index=10, kid=f"junk-{i}") for i in range(garbage)]
    got = run_with_set(lua, {"name": unique("garbage"), "uri": server.base + path, "min_refetch": 60}, f"""
        assert(set:refresh())
        local out = {{}}
        for i = 2, #tokens do
            out[#out + 1] = check(tokens[i])
        end
        assert(require("gwc.http_client").request{{ url = "{server.base}/rotate{path}" }})
        out[#out + 1] = check(tokens[1])
        return out
    """, [new_token, *junk])
    assert got == ["jwt_unknown_kid"] * garbage + ["ok"]
    # The initial fetch, one refetch per garbage token, one that finds the new key.
    assert server.count(path) == 1 + garbage + 1


def test_budget_is_shared_by_the_workers_of_a_node(lua, server):
    """Sets of the same name and source (as in two workers) spend one budget."""
    path = f"/{unique('jwks')}"
    server.serve(path, jwks_of(public_jwk("rsa", 10, kid="k10")))
    name = unique("node")
    tokens = [mint("RS256", index=10, kid=f"made-up-{i}") for i in range(4)]
    got = run_with_set(lua, {"name": name, "uri": server.base + path, "min_refetch": 60, "refetch_burst": 2}, f"""
        assert(set:refresh())
        local twin = assert(jwks.new{{ name = "{name}", uri = "{server.base}{path}", min_refetch = 60, refetch_burst = 2 }})
        local v2 = assert(jwt.new{{ keys = twin, algorithms = {{ "RS256" }} }})
        local out = {{ check(tokens[1]) }}
        for i = 2, 4 do
            local c, reason = v2:verify(tokens[i])
            out[#out + 1] = c and "ok" or reason
        end
        twin:close()
        return out
    """, tokens)
    assert got == ["jwt_unknown_kid"] * 4
    assert server.count(path) == 3  # the initial fetch and the shared burst of 2


def test_concurrent_users_of_a_new_key_wait_for_one_fetch(lua, server):
    path = f"/{unique('jwks')}"
    server.serve(path, jwks_of(public_jwk("rsa", 10, kid="old")))
    new_token = mint("RS256", index=11, kid="new")
    got = run_with_set(lua, {"name": unique("wait"), "uri": server.base + path, "min_refetch": 60}, f"""
        assert(set:refresh())
        assert(require("gwc.http_client").request{{ url = "{server.base}/rotate{path}" }})
        local threads, results = {{}}, {{}}
        for i = 1, 50 do
            threads[i] = ngx.thread.spawn(check, tokens[1])
        end
        for i = 1, 50 do
            local _, res = ngx.thread.wait(threads[i])
            results[res] = (results[res] or 0) + 1
        end
        return results
    """, [new_token])
    assert got == {"ok": 50}
    assert server.count(path) == 2  # the initial fetch and one refetch


def test_budget_refills_one_per_interval(lua, server):
    """Burst 1, interval 1 s: a second unknown kid within the interval fetches nothing, the next interval one more."""
    path = f"/{unique('jwks')}"
    server.serve(path, jwks_of(public_jwk("rsa", 10, kid="old")))
    new_token = mint("RS256", index=11, kid="new")
    got = run_with_set(lua, {"name": unique("interval"), "uri": server.base + path, "min_refetch": 1, "refetch_burst": 1}, f"""
        assert(set:refresh())
        local early = check(tokens[1])             -- refetches (still the old set): unknown
        assert(require("gwc.http_client").request{{ url = "{server.base}/rotate{path}" }})
        local within = check(tokens[1])            -- the budget is spent: still unknown
        ngx.sleep(1.2)
        local later = check(tokens[1])             -- one more refetch finds the new key
        return {{ early, within, later }}
    """, [new_token])
    assert got == ["jwt_unknown_kid", "jwt_unknown_kid", "ok"]
    assert server.count(path) == 3


def test_burst_zero_never_refetches(lua, server):
    path = f"/{unique('jwks')}"
    server.serve(path, jwks_of(public_jwk("rsa", 10, kid="old")))
    new_token = mint("RS256", index=11, kid="new")
    got = run_with_set(lua, {"name": unique("zero"), "uri": server.base + path, "refetch_burst": 0}, f"""
        assert(set:refresh())
        assert(require("gwc.http_client").request{{ url = "{server.base}/rotate{path}" }})
        local unknown = check(tokens[1])
        assert(set:refresh())                      -- what jwks_refresh would do
        return {{ unknown, check(tokens[1]) }}
    """, [new_token])
    assert got == ["jwt_unknown_kid", "ok"]
    assert server.count(path) == 2  # the two explicit refreshes only


def test_jwks_down_during_a_refetch_keeps_the_known_keys(lua):
    """The issuer stops listening after the first fetch: unknown kids are refused, known ones keep working."""
    mark = lua.log_mark()
    issuer = JwksServer()
    issuer.thread.start()
    path = "/keys"
    issuer.serve(path, jwks_of(public_jwk("rsa", 10, kid="k10")))
    conf = {"name": unique("down"), "uri": issuer.base + path, "min_refetch": 60}
    fetched = run_with_set(lua, conf, "return set:refresh()")
    issuer.httpd.shutdown()
    issuer.httpd.server_close()
    known = mint("RS256", index=10, kid="k10")
    unknown = mint("RS256", index=11, kid="new")
    # A set of the same name and source takes the stored keys, as a worker would after the first fetch.
    got = run_with_set(lua, conf, """
        return { check(tokens[2]), check(tokens[1]), check(tokens[2]), check(tokens[1]) }
    """, [known, unknown])
    assert fetched is True
    assert got == ["jwt_unknown_kid", "ok", "jwt_unknown_kid", "ok"]
    assert issuer.count(path) == 1
    assert "fetch failed: connect to" in lua.nginx.read_error_log()[mark:]
    assert lua.lua_errors(since=mark) == ""


def test_discovery_gives_jwks_uri_and_issuer(lua, server):
    keys_path = f"/{unique('keys')}"
    disc_path = f"/{unique('tenant')}/.well-known/openid-configuration"
    issuer = f"{server.base}/tenant/"
    server.serve(keys_path, jwks_of(public_jwk("p256", 10, kid="ec10")))
    server.serve(disc_path, {"issuer": issuer, "jwks_uri": server.base + keys_path})
    good = mint("ES256", claims(iss=issuer), index=10, kid="ec10")
    bad_iss = mint("ES256", claims(iss="https://other/"), index=10, kid="ec10")
    got = run_with_set(lua, {"name": unique("disc"), "discovery": server.base + disc_path}, """
        local ok, err = set:refresh()
        return { ok = ok, issuer = set:issuer(), good = check(tokens[1]), bad = check(tokens[2]) }
    """, [good, bad_iss])
    assert got == {"ok": True, "issuer": issuer, "good": "ok", "bad": "jwt_bad_issuer"}
    assert server.count(disc_path) == 1 and server.count(keys_path) == 1


def test_unreachable_jwks_gives_jwks_unavailable(lua, server):
    mark = lua.log_mark()
    missing = f"/{unique('missing')}"  # answers 404
    token = mint("RS256", index=10, kid="k10")
    got = run_with_set(lua, {"name": unique("down"), "uri": server.base + missing, "min_refetch": 60, "refetch_burst": 1}, """
        local ok, err = set:refresh()
        return { ok = ok or false, err = err, first = check(tokens[1]), second = check(tokens[1]) }
    """, [token])
    assert got["ok"] is False and "404" in got["err"]
    assert got["first"] == "jwks_unavailable" and got["second"] == "jwks_unavailable"
    # refresh() plus one refetch for the first token; the burst of 1 leaves none for the second.
    assert server.count(missing) == 2
    assert lua.lua_errors(since=mark) == ""


def test_bad_documents_keep_the_previous_keys(lua, server):
    path = f"/{unique('jwks')}"
    server.serve(path, jwks_of(public_jwk("rsa", 10, kid="k10")))
    token = mint("RS256", index=10, kid="k10")
    got = run_with_set(lua, {"name": unique("keep"), "uri": server.base + path}, f"""
        assert(set:refresh())
        local out = {{}}
        for _, doc in ipairs({{ "not json", '{{"keys": []}}', '{{"keys": [{{"kty": "XYZ"}}]}}' }}) do
            assert(require("gwc.http_client").request{{ url = "{server.base}/set{path}", body = doc, method = "POST" }})
            local ok, err = set:refresh()
            out[#out + 1] = {{ ok = ok or false, verdict = check(tokens[1]) }}
        end
        return out
    """, [token])
    assert got == [{"ok": False, "verdict": "ok"}] * 3


@pytest.fixture(autouse=True)
def set_hook(server):
    """POST /set/<path> makes <path> serve the request body."""
    def do_post(handler):
        length = int(handler.headers.get("Content-Length", "0"))
        body = handler.rfile.read(length)
        server.serve(handler.path[len("/set"):], body)
        handler.send_response(204)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    server.httpd.RequestHandlerClass.do_POST = do_post
    yield


def test_workers_share_the_fetched_document(lua, server):
    """A second set of the same name and source (as in another worker) takes the keys from the shm."""
    path = f"/{unique('jwks')}"
    server.serve(path, jwks_of(public_jwk("rsa", 10, kid="k10")))
    name = unique("shared")
    token = mint("RS256", index=10, kid="k10")
    got = run_with_set(lua, {"name": name, "uri": server.base + path}, f"""
        assert(set:refresh())
        local twin = assert(jwks.new{{ name = "{name}", uri = "{server.base}{path}" }})
        local v2 = assert(jwt.new{{ keys = twin, algorithms = {{ "RS256" }} }})
        local c, reason = v2:verify(tokens[1])
        twin:close()
        return {{ twin = c and "ok" or reason, count = twin:key_count() }}
    """, [token])
    assert got == {"twin": "ok", "count": 1}
    assert server.count(path) == 1


def test_init_worker_timer_fetches_in_the_background(lua, server):
    path = f"/{unique('jwks')}"
    server.serve(path, jwks_of(public_jwk("rsa", 10, kid="k10")))
    got = run_with_set(lua, {"name": unique("timer"), "uri": server.base + path, "refresh": 300}, """
        local before = set:key_count()
        assert(jwks.init_worker())
        assert(jwks.init_worker())  -- idempotent
        local waited = 0
        while set:key_count() == 0 and waited < 5 do
            ngx.sleep(0.1)
            waited = waited + 0.1
        end
        return { before = before, after = set:key_count() }
    """)
    assert got == {"before": 0, "after": 1}
    assert server.count(path) == 1


def test_new_rejects_bad_configuration(lua):
    got = lua.run("""
        local jwks = require "gwc.jwks"
        local out = {}
        local function try(conf)
            local s, err = jwks.new(conf)
            out[#out + 1] = s and "ok" or err
        end
        try{ name = "x" }
        try{ name = "x", uri = "ftp://example.com/keys" }
        try{ name = "x", uri = "http://127.0.0.1/keys", discovery = "http://127.0.0.1/d" }
        try{ name = "x", uri = "http://127.0.0.1/keys", shm = "no_such_dict" }
        try{ name = "x", uri = "http://127.0.0.1/keys", refresh = 0 }
        try{ name = "x", keys = { keys = {} } }
        local s = jwks.new{ name = "x", uri = "http://127.0.0.1/keys" }
        out[#out + 1] = s and "ok"
        s:close()
        return out
    """)
    assert "ok" not in got[:6], got
    assert got[6] == "ok"


# --- gwc.http_client -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["length", "chunked", "close"])
def test_http_client_body_framings(lua, server, mode):
    path = f"/{unique('doc')}"
    doc = {"keys": [], "padding": "x" * 5000}
    server.serve(path, doc, mode=mode)
    got = lua.run(f"""
        local hc = require "gwc.http_client"
        local res, err = hc.request{{ url = "{server.base}{path}?q=1", timeout = 2000 }}
        if not res then return {{ err = err }} end
        return {{ status = res.status, ctype = res.headers["content-type"], body = res.body }}
    """)
    assert got["status"] == 200 and got["ctype"] == "application/json"
    assert json.loads(got["body"]) == doc


def test_http_client_limits_and_errors(lua, server):
    path = f"/{unique('big')}"
    server.serve(path, b"x" * 20000, mode="chunked")
    path2 = f"/{unique('big')}"
    server.serve(path2, b"x" * 20000)
    got = lua.run(f"""
        local hc = require "gwc.http_client"
        local out = {{}}
        local _, e1 = hc.request{{ url = "{server.base}{path}", max_body = 1000 }}
        local _, e2 = hc.request{{ url = "{server.base}{path2}", max_body = 1000 }}
        local r3 = hc.request{{ url = "{server.base}/nothing-here" }}
        local _, e4 = hc.request{{ url = "http://127.0.0.1:1/", timeout = 500 }}
        local _, e5 = hc.request{{ url = "{server.base}/x", headers = {{ ["X-Bad"] = "a\\r\\nInjected: 1" }} }}
        local _, e6 = hc.request{{ url = "gopher://example.com/" }}
        return {{ e1, e2, r3 and r3.status, e4 ~= nil, e5, e6 }}
    """)
    assert "too large" in got[0] and "too large" in got[1]
    assert got[2] == 404
    assert got[3] is True
    assert "bad request header" in got[4]
    assert "unsupported URL" in got[5]


@pytest.fixture(scope="module")
def tls_server():
    s = JwksServer(tls=True)
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_jwks_over_https(lua, tls_server):
    """https with verification off works; with it on, an untrusted certificate fails the fetch (no trust store
    is configured in this nginx: production sets lua_ssl_trusted_certificate)."""
    path = f"/{unique('jwks')}"
    tls_server.serve(path, jwks_of(public_jwk("rsa", 10, kid="k10")), mode="chunked")
    token = mint("RS256", index=10, kid="k10")
    insecure = run_with_set(lua, {"name": unique("tls"), "uri": tls_server.base + path, "ssl_verify": False}, """
        local ok, err = set:refresh()
        return { ok = ok, err = err, verdict = check(tokens[1]) }
    """, [token])
    assert insecure == {"ok": True, "verdict": "ok"}
    strict = run_with_set(lua, {"name": unique("tls"), "uri": tls_server.base + path, "min_refetch": 60}, """
        local ok, err = set:refresh()
        return { ok = ok or false, err = err, verdict = check(tokens[1]) }
    """, [token])
    assert strict["ok"] is False and "TLS handshake" in strict["err"]
    assert strict["verdict"] == "jwks_unavailable"
