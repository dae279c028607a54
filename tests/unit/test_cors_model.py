"""The CORS model and plan (compiler/gwc/cors.py): origins, wildcards, the numbered
policies, the preflight answers, and the nginx configuration they become (parsed
with crossplane). The same policies run live in tests/live/test_cors.py."""
import json
import re
import subprocess
import sys
import textwrap

import crossplane
import pytest

from gwc.cors import CorsResponse, Wildcard, header_problem, parse_origin
from gwc.load import load
from gwc.model import build
from gwc.plan import plan

BASE = """
openapi: 3.0.3
info: {title: T, version: "1"}
x-gateway:
  upstreams: {a: {servers: ["http://127.0.0.1:9"]}}
  upstream: a
%s
paths:
%s
"""

PETS = """\
/pets/{id}:
  parameters:
    - {name: id, in: path, required: true, schema: {type: string}}
    - {name: X-Trace, in: header, schema: {type: string}}
  get: {operationId: getPet, responses: {"200": {description: ok}}}
  put: {operationId: putPet, responses: {"200": {description: ok}}}
"""


def write(tmp_path, root: str, paths: str = PETS, extra: str = "") -> str:
    spec = tmp_path / "api.yaml"
    spec.write_text(extra + BASE % (textwrap.indent(textwrap.dedent(root), "  "), textwrap.indent(textwrap.dedent(paths), "  ")))
    return str(spec)


def built(tmp_path, root: str, paths: str = PETS, extra: str = ""):
    doc, diags = load(write(tmp_path, root, paths, extra))
    assert doc is not None, diags
    gateway, diags = build(doc)
    assert not [d for d in diags if d.is_error], [d.format_text() for d in diags]
    the_plan, diags = plan(gateway)
    assert the_plan is not None, [d.format_text() for d in diags]
    return gateway, the_plan, diags


# --------------------------------------------------------------------------- origins


@pytest.mark.parametrize("text,parsed", [
    ("https://app.example.com", "https://app.example.com"),
    ("HTTPS://App.Example.COM", "https://app.example.com"),  # lower-cased in the model
    ("https://app.example.com:443", "https://app.example.com"),  # browsers omit the default port
    ("http://localhost:80", "http://localhost"),
    ("http://localhost:3000", "http://localhost:3000"),
    ("https://app.example.com:8443", "https://app.example.com:8443"),
    ("http://127.0.0.1:5173", "http://127.0.0.1:5173"),
    ("http://[::1]:8080", "http://[::1]:8080"),
    ("chrome-extension://abcdefghijklmnop", "chrome-extension://abcdefghijklmnop"),
    ("https://*.example.com", Wildcard("https", "example.com", None)),
    ("https://*.example.com:8443", Wildcard("https", "example.com", 8443)),
    ("https://*.a.example.com:443", Wildcard("https", "a.example.com", None)),
])
def test_origin_parsed(text, parsed):
    assert parse_origin(text) == parsed


@pytest.mark.parametrize("text,why", [
    ("https://app.example.com/", "no path"),
    ("https://app.example.com/x", "no path"),
    ("https://app.example.com?x", "no path"),
    ("app.example.com", "scheme://host"),
    ("//app.example.com", "scheme://host"),
    ("https://", "not a host name"),
    ("https://app..example.com", "not a host name"),
    ("https://-app.example.com", "not a host name"),
    ("https://app.example.com:0", "1-65535"),
    ("https://app.example.com:65536", "1-65535"),
    ("https://app.example.com:08080", "1-65535"),
    ("https://app.example.com:", "1-65535"),
    ("https://u:p@app.example.com", "user information"),
    ("https://*.com", "two labels"),
    ("https://*", "whole leading labels"),
    ("https://a.*.example.com", "whole leading labels"),
    ("https://*example.com", "whole leading labels"),
    ("*.example.com", "scheme://host"),
    ("https://app.example.com\r\nX: 1", "control"),
    ('https://a"b.test', "not a host name"),
    ("https://a;b.test", "not a host name"),
    ("https://a{b.test", "not a host name"),
    ("https://$host", "not a host name"),
    ("https://bücher.test", "non-ASCII"),
    ("https://[::1", "[address]"),
    ("https://[fe80::1%25eth0]", "IPv6"),
])
def test_origin_refused(text, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_origin(text)


WILDCARD = Wildcard("https", "example.com", None)


@pytest.mark.parametrize("origin,allowed", [
    ("https://a.example.com", True),
    ("https://a.b.example.com", True),
    ("https://x-1.example.com", True),
    ("https://A.EXAMPLE.COM", True),  # scheme and host compare case-insensitively
    ("https://example.com", False),  # the apex is not a subdomain
    ("https://evil-example.com", False),
    ("https://evilexample.com", False),
    ("https://example.com.evil.com", False),
    ("https://a.example.com.evil.com", False),
    ("https://a.example.com:443", False),  # a browser never sends the default port
    ("https://a.example.com:8443", False),
    ("http://a.example.com", False),
    ("https://.example.com", False),
    ("https://-a.example.com", False),
    ("https://a-.example.com", False),
    ("https://*.example.com", False),
    ("https://a.example.com/", False),
    ("https://a.example.com.", False),
    ("https://a_b.example.com", False),
    ("https://a.example.comx", False),
    ("xhttps://a.example.com", False),
])
def test_wildcard_never_matches_a_lookalike(origin, allowed):
    assert WILDCARD.matches(origin) is allowed


ANY = CorsResponse((), (), True, False, ())


@pytest.mark.parametrize("origin,allowed", [
    ("https://anyone.test", True),
    ("http://127.0.0.1:5173", True),
    ("http://[::1]:8080", True),
    ("chrome-extension://abc", True),
    ("null", False),
    ("", False),
    ("https://a.test/", False),
    ("https://a.test/x", False),
    ("a.test", False),
    ("https://a.test https://b.test", False),
    ("https://a.test:", False),
])
def test_any_origin_means_any_well_formed_origin(origin, allowed):
    assert ANY.allows(origin) is allowed


@pytest.mark.parametrize("name,response,problem", [
    ("X-Trace", False, None),
    ("content-type", False, None),
    ("*", False, None),
    ("Cookie", False, "forbidden"),
    ("Host", False, "forbidden"),
    ("Origin", False, "forbidden"),
    ("Proxy-Authorization", False, "forbidden"),
    ("Sec-Fetch-Site", False, "forbidden"),
    ("Set-Cookie", True, "never be exposed"),
    ("Set-Cookie", False, "forbidden"),
    ("X-Backend", True, None),
    ('X"A', False, "not a header name"),
    ("X A", False, "not a header name"),
    ("", False, "not a header name"),
    ("X;A", True, "not a header name"),
])
def test_header_names(name, response, problem):
    got = header_problem(name, response)
    assert (got is None) if problem is None else (problem in got)


# --------------------------------------------------------------------------- model and plan


def test_inner_levels_override_and_maps_deep_merge(tmp_path):
    paths = PETS.replace(
        "  put: {operationId: putPet,",
        "  put: {operationId: putPet, x-gateway: {cors: {max_age: 5, headers: [X-Other]}},") + textwrap.dedent("""\
        /off:
          x-gateway: {cors: false}
          get: {operationId: getOff, responses: {"200": {description: ok}}}
        /on:
          x-gateway: {cors: false}
          get:
            operationId: getOn
            x-gateway: {cors: {origins: ["https://b.test"]}}
            responses: {"200": {description: ok}}
        """)
    gateway, the_plan, _ = built(tmp_path, 'cors: {origins: ["https://A.test"], credentials: true, expose: [X-One]}', paths)
    ops = {op.operation_id: op for op in gateway.operations}
    assert gateway.cors.response.origins == ("https://a.test",)
    get, put = ops["getPet"].cors, ops["putPet"].cors
    assert get.response == put.response  # the same origins, credentials and expose
    assert (get.max_age, get.headers) == (600, None)
    assert (put.max_age, put.headers) == (5, ("X-Other",))
    assert ops["getOff"].cors is None
    # cors: false on the path item, then a map on the operation: only the operation's keys
    assert ops["getOn"].cors.response == CorsResponse(("https://b.test",), (), False, False, ())
    cors = the_plan.cors
    assert cors.root_index == 1
    assert [cors.op_index[i] for i, op in enumerate(gateway.operations)] == [
        {"getPet": 1, "putPet": 1, "getOff": 0, "getOn": 2}[op.operation_id] for op in gateway.operations]


def test_cors_true_inside_keeps_the_outer_policy(tmp_path):
    paths = PETS.replace("  get: {operationId: getPet,", "  get: {operationId: getPet, x-gateway: {cors: true},")
    gateway, the_plan, _ = built(tmp_path, 'cors: {origins: ["https://a.test"], credentials: true, max_age: 90}', paths)
    ops = {op.operation_id: op for op in gateway.operations}
    assert ops["getPet"].cors == ops["putPet"].cors  # the root's policy, unchanged
    assert (ops["getPet"].cors.response.origins, ops["getPet"].cors.max_age) == (("https://a.test",), 90)


def test_preflight_answers_per_path(tmp_path):
    paths = PETS + '  delete: {operationId: deletePet, x-gateway: {cors: false}, responses: {"200": {description: ok}}}\n'
    paths = paths.replace("  put: {operationId: putPet,", "  put: {operationId: putPet, x-gateway: {cors: {methods: [GET, PUT, DELETE], max_age: 60}},")
    gateway, the_plan, _ = built(tmp_path, 'cors: {origins: ["https://a.test"]}', paths)
    route = the_plan.route_data()["routes"][0]
    pf = {p.ident: p for p in the_plan.cors.preflights}
    answers = route["preflight"]
    assert answers["DELETE"] == "pf0"  # its operation has cors: false
    get, put = pf[answers["GET"]], pf[answers["PUT"]]
    assert answers["HEAD"] == answers["GET"]
    # never a method whose own operation does not share the policy (DELETE), even when listed
    assert get.methods == ("GET", "HEAD", "PUT") and put.methods == ("GET", "PUT")
    assert get.headers == ("Content-Type", "X-Trace") and (get.max_age, put.max_age) == (600, 60)


def test_implied_headers_name_the_credentials(tmp_path):
    extra = textwrap.dedent("""\
        components:
          securitySchemes:
            user: {type: http, scheme: bearer, x-gateway: {jwks_uri: "http://127.0.0.1:1/jwks"}}
        """)
    paths = PETS.replace("  get: {operationId: getPet,", "  get: {operationId: getPet, security: [{user: []}],")
    paths = paths.replace("  put: {operationId: putPet,", "  put: {operationId: putPet, security: [], "
                          "x-gateway: {authorizer: {url: 'http://127.0.0.1:1/auth', identity: [header.X-Session]}},")
    gateway, the_plan, _ = built(tmp_path, 'cors: {origins: ["https://a.test"]}', paths, extra)
    (pf,) = the_plan.cors.preflights
    assert pf.headers == ("Content-Type", "Authorization", "X-Session", "X-Trace")


def test_root_methods_cap_every_path(tmp_path):
    paths = PETS + textwrap.dedent("""\
        /only-get:
          get: {operationId: onlyGet, responses: {"200": {description: ok}}}
        """)
    _, the_plan, _ = built(tmp_path, 'cors: {origins: ["https://a.test"], methods: [GET, PUT]}', paths)
    by_path = {r["path"]: r["preflight"] for r in the_plan.route_data()["routes"]}
    pf = {p.ident: p for p in the_plan.cors.preflights}
    assert pf[by_path["/pets/{id}"]["GET"]].methods == ("GET", "PUT")
    assert pf[by_path["/only-get"]["GET"]].methods == ("GET",)  # PUT is not declared there: no error, capped
    assert by_path["/only-get"]["HEAD"] == "pf0"  # HEAD was not in the list


def test_aws_dialect_maps_to_the_same_model(tmp_path):
    extra = textwrap.dedent("""\
        x-amazon-apigateway-cors:
          allowOrigins: ["https://App.test"]
          allowMethods: ["*"]
          allowHeaders: [x-custom]
          exposeHeaders: [x-backend]
          allowCredentials: true
          maxAge: 300
        """)
    gateway, _, _ = built(tmp_path, "", PETS, extra)
    c = gateway.cors
    assert c.response == CorsResponse(("https://app.test",), (), False, True, ("x-backend",))
    assert (c.methods, c.headers, c.max_age, c.private_network) == (None, ("x-custom",), 300, False)
    assert gateway.operations[0].cors == c


def test_x_gateway_cors_wins_over_the_aws_dialect(tmp_path):
    extra = 'x-amazon-apigateway-cors: {allowOrigins: ["https://aws.test"]}\n'
    gateway, _, _ = built(tmp_path, 'cors: {origins: ["https://gw.test"]}', PETS, extra)
    doc, _ = load(str(tmp_path / "api.yaml"))
    _, diags = build(doc)
    assert gateway.cors.response.origins == ("https://gw.test",)
    assert [d.code for d in diags] == ["GW108"] and diags[0].severity == "warning"


def test_no_cors_no_maps(tmp_path):
    _, the_plan, _ = built(tmp_path, "")
    assert the_plan.cors is None
    assert all(loc.cors is None for loc in the_plan.locations)
    assert "cors" not in json.dumps(the_plan.route_data())


# --------------------------------------------------------------------------- the configuration


def _build_conf(tmp_path, root, paths=PETS):
    spec = write(tmp_path, root, paths)
    proc = subprocess.run([sys.executable, "-m", "gwc.cli", "build", spec, "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    parsed = crossplane.parse(str(tmp_path / "out" / "nginx.conf"), comments=False, strict=False)
    assert not parsed["errors"], parsed["errors"]
    return parsed["config"][0]["parsed"]


def _find(block, directive):
    for d in block:
        if d["directive"] == directive:
            yield d
        yield from _find(d.get("block", []), directive)


def test_configuration_maps_and_locations(tmp_path):
    root = 'cors: {origins: ["https://app.test", "https://*.example.com", "https://' + "x" * 60 + '.test"], credentials: true, expose: [X-B]}'
    conf = _build_conf(tmp_path, root)
    maps = {d["args"][1]: d for d in _find(conf, "map")}
    origin = maps["$gw_cors_origin"]
    assert origin["args"][0] == "$gw_cors|$http_origin"
    entries = {d["directive"]: d["args"] for d in origin["block"]}
    assert entries["1|https://app.test"] == ["$http_origin"]
    assert entries["|https://app.test"] == ["$http_origin"]  # before routing: the root policy
    regexes = [d["directive"] for d in origin["block"] if d["directive"].startswith("~")]
    assert regexes == ["~*^1\\|https://([a-z0-9]([a-z0-9-]*[a-z0-9])?\\.)+example\\.com$",
                       "~*^\\|https://([a-z0-9]([a-z0-9-]*[a-z0-9])?\\.)+example\\.com$"]
    # the 73-byte origin key needs a larger bucket than nginx's default 64
    assert [d["args"] for d in _find(conf, "map_hash_bucket_size")] == [["128"]]
    creds = {d["directive"]: d["args"] for d in maps["$gw_cors_credentials"]["block"]}
    assert creds == {"default": [""], "1:1": ["true"], ":1": ["true"]}
    locations = {" ".join(d["args"]): d["block"] for d in _find(conf, "location")}
    for name in ("= gw:1", "= gw:e404", "= gw:e405", "= /_gwc/error"):
        added = [d["args"] for d in locations[name] if d["directive"] == "add_header"]
        assert ["Access-Control-Allow-Origin", "$gw_cors_origin", "always"] in added, name
        assert ["Vary", "Origin", "always"] in added, name
    hidden = {d["args"][0] for d in locations["= gw:1"] if d["directive"] == "proxy_hide_header"}
    assert {"Access-Control-Allow-Origin", "Access-Control-Allow-Credentials"} <= hidden
    pf = locations["= gw:pf1"]
    assert [d["args"] for d in pf if d["directive"] == "set"] == [["$gw_cors", "1"]]
    assert [d["args"] for d in pf if d["directive"] == "return"] == [["204"]]
    assert ["Access-Control-Allow-Methods", "GET, HEAD, PUT", "always"] in [d["args"] for d in pf if d["directive"] == "add_header"]
    assert [d["args"] for d in locations["= gw:pf0"] if d["directive"] == "return"] == [["204"]]


def test_a_wildcard_origin_becomes_an_anchored_regex_only(tmp_path):
    """No spec character reaches the regex except checked DNS labels, escaped."""
    conf = _build_conf(tmp_path, 'cors: {origins: ["https://*.a-b.example.com:8443"]}')
    origin = next(d for d in _find(conf, "map") if d["args"][1] == "$gw_cors_origin")
    regexes = [d["directive"] for d in origin["block"] if d["directive"].startswith("~")]
    assert regexes[0] == "~*^1\\|https://([a-z0-9]([a-z0-9-]*[a-z0-9])?\\.)+a\\-b\\.example\\.com:8443$"
    body = regexes[0][len("~*"):]
    assert re.fullmatch(body, "1|https://x.a-b.example.com:8443", re.I)
    assert not re.fullmatch(body, "1|https://xa-b.example.com:8443", re.I)
    assert not re.fullmatch(body, "1|https://x.a-b.example.com:8443.evil.test", re.I)
