"""The response-cache model (compiler/gwc/response_cache.py), its plan and its rendered directives.

Cases as data: a spec fragment in, the operations' Cache (or the rendered lines) out; the
freshness and refresh maps as Cache-Control values in, "stored or not" out.
"""
import re
import textwrap

import crossplane
import pytest

from gwc import pipeline
from gwc.render import RenderOptions
from gwc.response_cache import REFRESH_REGEX, below_regex, fresh_rules

SPEC = """\
openapi: 3.0.3
info: {title: t, version: "1"}
x-gateway:
  upstreams: {a: {servers: ["http://127.0.0.1:9"]}}
  upstream: a
  keys: keys.yaml
%(root)s
components:
  securitySchemes:
    key: {type: apiKey, in: header, name: X-API-Key}
    qkey: {type: apiKey, in: query, name: api_key}
security: []
paths:
  /pets/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: string}}
      - {name: lang, in: query, schema: {type: string}}
      - {name: Accept-Language, in: header, schema: {type: string}}
      - {name: session, in: cookie, schema: {type: string}}
%(item)s
    get:
      operationId: getPet
%(get)s
      responses: {"200": {description: ok}}
    post:
      operationId: postPet
%(post)s
      responses: {"200": {description: ok}}
  /mine:
    get:
      operationId: mine
      security: [{key: []}]
%(mine)s
      responses: {"200": {description: ok}}
"""


def _indent(text, n):
    return textwrap.indent(textwrap.dedent(text).strip("\n"), " " * n) if text else ""


def write(tmp_path, root="", item="", get="", post="", mine=""):
    (tmp_path / "keys.yaml").write_text("consumers: []\n")
    spec = tmp_path / "api.yaml"
    spec.write_text(SPEC % {"root": _indent(root, 2), "item": _indent(item, 4), "get": _indent(get, 6),
                            "post": _indent(post, 6), "mine": _indent(mine, 6)})
    return spec


def caches(tmp_path, **parts):
    result = pipeline.check(str(write(tmp_path, **parts)), structural=False)
    assert result.ok, [d.format_text() for d in result.diagnostics]
    return {op.operation_id: op.cache for op in result.plan.gateway.operations}, result


MODEL_CASES = [
    # (name, spec parts, operation, expected attributes; None: not cached)
    ("no cache anywhere", {}, "getPet", None),
    ("root cache reaches GET with the defaults", {"root": "cache: {}"}, "getPet",
     {"ttl_s": 30, "methods": ("GET", "HEAD"), "identity": False, "refresh": "", "stale_if_error_s": 0,
      "credentials": ("$arg_api_key", "$http_authorization", "$http_x_api_key")}),
    ("root cache leaves POST uncached", {"root": "cache: {}"}, "postPet", None),
    ("POST listed on the operation is cached", {"post": "x-gateway: {cache: {methods: [POST]}}"}, "postPet",
     {"methods": ("GET", "HEAD", "POST")}),
    ("path-item cache off for one operation", {"item": "x-gateway: {cache: {ttl: 5m}}", "get": "x-gateway: {cache: false}"},
     "getPet", None),
    ("path-item cache deep-merges into the operation", {"item": "x-gateway: {cache: {ttl: 5m}}",
                                                         "get": "x-gateway: {cache: {stale_if_error: 1h}}"},
     "getPet", {"ttl_s": 300, "stale_if_error_s": 3600}),
    ("an authenticated operation keys on the scheme and consumer", {"root": "cache: {}"}, "mine",
     {"identity": True, "credentials": (), "refresh": "consumer"}),
    ("shared drops the identity", {"root": "cache: {shared: true}"}, "mine", {"identity": False, "credentials": ()}),
    ("client_refresh any on a public operation", {"root": "cache: {client_refresh: any}"}, "getPet", {"refresh": "any"}),
    ("client_refresh authorized on a public operation is nobody", {"root": "cache: {}"}, "getPet", {"refresh": ""}),
    ("client_refresh deny", {"root": "cache: {client_refresh: deny}"}, "mine", {"refresh": ""}),
]


@pytest.mark.parametrize("name,parts,op,expected", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_cache_model(tmp_path, name, parts, op, expected):
    got, _ = caches(tmp_path, **parts)
    if expected is None:
        assert got[op] is None
        return
    assert got[op] is not None
    for attr, value in expected.items():
        assert getattr(got[op], attr) == value, attr


def test_key_parts_and_guards(tmp_path):
    got, result = caches(tmp_path, get="x-gateway: {cache: {key: [path.id, query.lang, header.Accept-Language, cookie.session, header.accept]}}",
                         mine="x-gateway: {cache: {}}")
    c = got["getPet"]
    # Path parameters are in the request path; the others in a fixed order; the consumer only where authenticated.
    assert c.key_parts == ("$gw_cache_gen", "$request_method", "$host", "$gw_op", "$gw_log_path",
                           "$cookie_session", "$http_accept", "$http_accept_language", "$arg_lang")
    assert c.checked_parts == c.key_parts[2:3] + c.key_parts[4:]
    assert got["mine"].key_parts[-2:] == ("$gw_consumer_scheme", "$gw_consumer")
    assert "$gw_consumer" not in got["mine"].checked_parts  # the last part may hold the separator
    assert re.fullmatch(c.guard_regex, "|".join(["h", "/p", "", "a", "b", "c"]))
    assert not re.fullmatch(c.guard_regex, "|".join(["h", "/p", "x|y", "a", "b", "c"]))
    assert c.guard_variable != got["mine"].guard_variable
    # Different caches, different locations.
    locs = dict(zip([o.operation_id for o in result.plan.gateway.operations], result.plan.operation_locations))
    assert locs["getPet"] != locs["mine"] != locs["postPet"]


def test_zone_defaults_and_paths(tmp_path):
    _, result = caches(tmp_path, root="cache: {}")
    zone = result.plan.gateway.cache_zone
    assert (zone.path, zone.max_size, zone.inactive_s, zone.keys_size) == ("cache", "256m", 600, "10m")
    assert zone.directory("") == "cache" and zone.directory("/etc/nginx/gwc/") == "/etc/nginx/gwc/cache"
    _, result = caches(tmp_path, root="cache_zone: {path: /var/cache/gwc, size: 1g, inactive: 1h}\ncache: {}")
    zone = result.plan.gateway.cache_zone
    assert zone.directory("/etc/nginx/gwc/") == "/var/cache/gwc" and zone.inactive_s == 3600
    _, result = caches(tmp_path)
    assert result.plan.gateway.cache_zone is None


# --------------------------------------------------------------------------- maps

@pytest.mark.parametrize("limit", [1, 2, 9, 10, 11, 30, 99, 100, 101, 300, 3600, 86400])
def test_below_regex(limit):
    r = re.compile("^(?:%s)$" % below_regex(limit))
    for n in list(range(0, min(limit + 120, 5000))) + [limit, limit * 10, limit + 1]:
        assert bool(r.match(str(n))) is (n < limit), n


def _stored(ttl, expires, cache_control):
    value = f"{expires}|{cache_control}"
    for regex, verdict in fresh_rules(ttl):
        if re.search(regex, value, re.I):
            return verdict == 0
    return True


FRESH_CASES = [
    # (Expires, Cache-Control, stored under a ttl of 30s)
    ("", "", True),
    ("", "public", True),
    ("", "max-age=30", True),
    ("", "public, max-age=3600", True),
    ("", "max-age=29", False),
    ("", "max-age=0", False),
    ("", "max-age=007", False),
    ("", 'max-age="60"', True),
    ("", "max-age=abc", False),
    ("", "private", False),
    ("", "public, private=\"X-A\"", False),
    ("", "no-store", False),
    ("", "NO-CACHE", False),
    ("", 'no-cache="Set-Cookie", max-age=600', False),
    ("", "max-age=600, s-maxage=10", False),
    ("", "max-age=0, s-maxage=60", True),
    ("", "s-maxage=30", True),
    ("", "must-revalidate, max-age=60", True),
    ("Thu, 01 Jan 1970 00:00:00 GMT", "", False),
    ("Thu, 01 Jan 2099 00:00:00 GMT", "max-age=60", True),
    ("Thu, 01 Jan 2099 00:00:00 GMT", "max-age=5", False),
]


@pytest.mark.parametrize("expires,cache_control,stored", FRESH_CASES)
def test_fresh_rules(expires, cache_control, stored):
    assert _stored(30, expires, cache_control) is stored


@pytest.mark.parametrize("value,refresh", [
    ("max-age=0", True), ("no-cache", True), ("No-Cache", True), ("max-age=00", True), ("private, max-age=0", True),
    ("max-age=10", False), ("max-age=0x", False), ("no-cache-ish", False), ("", False), ("no-store", False),
])
def test_refresh_regex(value, refresh):
    assert bool(re.search(REFRESH_REGEX, value, re.I)) is refresh


# --------------------------------------------------------------------------- rendering

def rendered(tmp_path, **parts):
    result = pipeline.build(str(write(tmp_path, **parts)), RenderOptions(target="nginx-lua"))
    assert result.ok, [d.format_text() for d in result.diagnostics]
    return result.files


def test_rendered_lines_parse_with_the_allow_list(tmp_path):
    from test_structure import ALLOWED

    files = rendered(tmp_path, root="cache_zone: {size: 64m}\ncache: {ttl: 1m, stale_if_error: 30s}\nstatus: {}",
                     get="x-gateway: {cache: {key: [query.lang]}}")
    for name in ("nginx.conf", "conf.d/gateway.conf"):
        path = tmp_path / name.replace("/", "_")
        path.write_bytes(files[name])
        parsed = crossplane.parse(str(path), strict=False, check_ctx=False, check_args=False, single=True)
        assert parsed["status"] == "ok", parsed["errors"]
        seen = set()

        def walk(block, parent=""):
            for d in block:
                if parent not in ("map", "geo"):
                    seen.add(d["directive"])
                walk(d.get("block") or [], d["directive"])
        walk(parsed["config"][0]["parsed"])
        # The structural allow-list knows every proxy directive (other capabilities add their own there).
        unknown = {d for d in seen - ALLOWED if d.startswith(("proxy_", "lua_", "set"))}
        assert not unknown, unknown
    conf = files["nginx.conf"].decode()
    assert 'proxy_cache_path "cache" levels=1:2 keys_zone=gwc_cache:10m max_size=64m inactive=600s use_temp_path=off;' in conf
    assert 'proxy_cache_path "/etc/nginx/gwc/cache"' in files["conf.d/gateway.conf"].decode()
    assert "proxy_cache_valid 200 203 204 301 308 60s;" in conf
    assert "proxy_cache_use_stale error timeout http_500 http_502 http_503 http_504;" in conf
    assert conf.count("proxy_cache gwc_cache;") == 2  # getPet, and mine (root cache); postPet is not cached
    assert 'proxy_cache_key "$gw_cache_gen|$request_method|$host|$gw_op|$gw_log_path|$arg_lang";' in conf
    assert 'proxy_cache_key "$gw_cache_gen|$request_method|$host|$gw_op|$gw_log_path|$gw_consumer_scheme|$gw_consumer";' in conf
    assert "location = /cache/invalidate {" in conf
    assert "lua_shared_dict gwc_cache_gen 1m;" in conf
    assert '"cache":"$upstream_cache_status"' in conf


def test_no_cache_no_cache_lines(tmp_path):
    conf = rendered(tmp_path, root="status: {}")["nginx.conf"].decode()
    for text in ("proxy_cache", "gwc_cache_gen", "/cache/invalidate", "X-Cache-Status", "$gw_cache"):
        assert text not in conf
