"""Model defaults and merging; plan's precedence order, trie and shared locations."""
import textwrap

import pytest

from gwc import load, model, pipeline, plan
from gwc.model import deep_merge, duration_ms, parse_listen, parse_server_url


def build(tmp_path, text, listen=None):
    (tmp_path / "api.yaml").write_text(textwrap.dedent(text))
    doc, diags = load.load(str(tmp_path / "api.yaml"))
    assert not diags
    gateway, diags = model.build(doc, listen)
    assert not [d for d in diags if d.is_error], diags
    return gateway


SPEC = """\
    openapi: 3.0.3
    info: {title: t, version: "1"}
    servers: [{url: "https://api.example.com/{v}", variables: {v: {default: v2}}}]
    x-gateway:
      upstreams:
        a: {servers: ["http://10.0.0.1"]}
        b: {servers: ["https://b.example:8443"], timeout: {read: 2m}, retries: {count: 0}}
      upstream: a
    paths:
      /x:
        x-gateway: {upstream: b}
        get: {responses: {"200": {description: ok}}}
        post: {x-gateway: {upstream: a}, responses: {"200": {description: ok}}}
      /y/{id}:
        parameters: [{name: id, in: path, required: true, schema: {type: string}}]
        get: {x-gateway: {mock: {status: 201, headers: {X-A: "1"}, body: {k: v}}}, responses: {"201": {description: ok}}}
        put: {responses: {"200": {description: ok}}}
    """


def test_defaults_come_from_the_schema(tmp_path):
    g = build(tmp_path, SPEC)
    a = g.upstream("a")
    assert (a.keepalive, a.connect_timeout_ms, a.read_timeout_ms, a.retry_tries, a.retry_on) == (32, 5000, 60000, 2, ("error", "timeout"))
    assert a.servers[0].port == 80 and a.host_header == "10.0.0.1"
    b = g.upstream("b")
    assert b.read_timeout_ms == 120000 and b.retry_tries == 1 and b.tls.server_name == "b.example" and b.tls.verify
    assert [l.address for l in g.listen] == ["0.0.0.0:8080"]
    assert g.base_paths == ("/v2",)
    assert (g.routing.encoded_slashes, g.routing.trailing_slash) == ("reject", "strict")


def test_inner_levels_override_outer(tmp_path):
    g = build(tmp_path, SPEC)
    by_label = {op.label: op for op in g.operations}
    assert by_label["GET /x"].upstream == "b"
    assert by_label["POST /x"].upstream == "a"
    assert by_label["PUT /y/{id}"].upstream == "a"
    mock = by_label["GET /y/{id}"].mock
    assert (mock.status, mock.headers, mock.body, mock.content_type) == (201, (("X-A", "1"),), '{"k": "v"}', "application/json")


def test_listen_override(tmp_path):
    g = build(tmp_path, SPEC, listen=["127.0.0.1:9999", "[::1]:80", "8080"])
    assert [l.address for l in g.listen] == ["127.0.0.1:9999", "[::1]:80", "8080"]


def test_deep_merge():
    assert deep_merge({"a": {"b": 1, "c": [1]}, "d": 1}, {"a": {"c": [2]}, "e": 2}) == {"a": {"b": 1, "c": [2]}, "d": 1, "e": 2}


@pytest.mark.parametrize("value, ms", [("250ms", 250), ("5s", 5000), ("2m", 120000), ("1h", 3600000), ("1d", 86400000), (3, 3000)])
def test_durations(value, ms):
    assert duration_ms(value) == ms


@pytest.mark.parametrize("raw", ["80; include x", "[::1:80", "999.1.1.1:80", "host:0", "a b:80", ":80"])
def test_bad_listen(raw):
    assert isinstance(parse_listen(raw), str)


@pytest.mark.parametrize("raw", ["ftp://a", "http://a/b", "http://u:p@a", "http://a?x", "http://a b", "http://a:70000", "http://[zz]:80", "http://a_b"])
def test_bad_server_urls(raw):
    assert isinstance(parse_server_url(raw), str)


def test_plan_orders_routes_by_precedence_and_shares_locations(tmp_path):
    g = build(tmp_path, """\
        openapi: 3.0.3
        info: {title: t, version: "1"}
        x-gateway:
          upstreams: {a: {servers: ["http://10.0.0.1"]}, b: {servers: ["http://10.0.0.2"]}}
          upstream: a
          validate: {parameters: false}  # validated operations get their own locations
        paths:
          /{p+}:
            parameters: [{name: p, in: path, required: true, schema: {type: string}}]
            get: {responses: {"200": {description: ok}}}
          /pets/{id}:
            parameters: [{name: id, in: path, required: true, schema: {type: string}}]
            get: {responses: {"200": {description: ok}}}
            delete: {x-gateway: {upstream: b}, responses: {"200": {description: ok}}}
          /pets/mine:
            get: {responses: {"200": {description: ok}}}
          /pets/{id}.json:
            parameters: [{name: id, in: path, required: true, schema: {type: string}}]
            get: {responses: {"200": {description: ok}}}
        """)
    p, diags = plan.plan(g)
    assert not diags
    assert [r.template.text for r in p.routes] == ["/pets/mine", "/pets/{id}.json", "/pets/{id}", "/{p+}"]
    assert len(p.locations) == 2, "operations with the same settings share one location"
    data = p.route_data()
    pets = data["tree"]["lit"]["pets"]
    assert set(pets) == {"lit", "mixed", "param"}
    assert pets["mixed"][0]["pattern"] == "^(.+)%.json$"
    assert data["tree"]["greedy"] == 4
    route = data["routes"][2]
    assert route["allow"] == "GET, HEAD, DELETE" and set(route["methods"]) == {"GET", "DELETE"}


SHAPES = """\
    openapi: 3.0.3
    info: {title: t, version: "1"}
    x-gateway: {upstreams: {a: {servers: ["http://10.0.0.1"]}}, upstream: a}
    paths:
"""

# (name, paths, expected error codes, pointer of the first error or None)
SHAPE_CASES = [
    ("disjoint methods build", """\
      /orgs/{org}/att/{attestation_id}:
        delete: {operationId: del, responses: {"204": {description: ok}}}
      /orgs/{org}/att/{subject_digest}:
        get: {operationId: list, responses: {"200": {description: ok}}}
    """, [], None),
    ("a shared method is an error naming both", """\
      /orgs/{org}/att/{attestation_id}:
        get: {operationId: one, responses: {"200": {description: ok}}}
      /orgs/{org}/att/{subject_digest}:
        get: {operationId: two, responses: {"200": {description: ok}}}
    """, ["GW031"], "/paths/~1orgs~1{org}~1att~1{subject_digest}"),
    ("fragments on disjoint methods build", """\
      /tags/{arn}:
        get: {operationId: list, responses: {"200": {description: ok}}}
      /tags/{arn}#tagKeys:
        delete: {operationId: untag, responses: {"204": {description: ok}}}
    """, [], None),
    ("a query in the path key selects without a declaration", """\
      /subs:
        post: {operationId: v1, responses: {"200": {description: ok}}}
      /subs?v=2:
        post: {operationId: v2, responses: {"200": {description: ok}}}
    """, [], None),
    ("a fragment naming no declared parameter is an error", """\
      /files/{id}:
        put: {operationId: update, responses: {"200": {description: ok}}}
      /files/{id}#add_shared_link:
        put: {operationId: share, responses: {"200": {description: ok}}}
    """, ["GW082"], "/paths/~1files~1{id}#add_shared_link"),
    ("overloads by request media type build", """\
      /analyze:
        post: {operationId: url, requestBody: {content: {application/json: {}}}, responses: {"200": {description: ok}}}
      /analyze#overload=stream:
        post: {operationId: stream, requestBody: {content: {application/octet-stream: {}}}, responses: {"200": {description: ok}}}
    """, [], None),
    ("one overload without a body takes requests without a Content-Type", """\
      /img:
        post: {operationId: plain, responses: {"200": {description: ok}}}
      /img#overload=stream:
        post: {operationId: stream, requestBody: {content: {image/png: {}}}, responses: {"200": {description: ok}}}
    """, [], None),
    ("two overloads without a body are an error", """\
      /img:
        post: {operationId: one, responses: {"200": {description: ok}}}
      /img#overload=stream:
        post: {operationId: two, responses: {"200": {description: ok}}}
    """, ["GW082"], "/paths/~1img#overload=stream"),
    ("overloads whose media types overlap are an error", """\
      /analyze:
        post: {operationId: one, requestBody: {content: {image/png: {}}}, responses: {"200": {description: ok}}}
      /analyze#overload=stream:
        post: {operationId: two, requestBody: {content: {image/*: {}}}, responses: {"200": {description: ok}}}
    """, ["GW082"], "/paths/~1analyze#overload=stream"),
    ("fragments whose conditions can both hold build (meeting both is a 400)", """\
      /b#uploads:
        post: {operationId: one, parameters: [{name: uploads, in: query, schema: {type: string}}], responses: {"200": {description: ok}}}
      /b#restore:
        post: {operationId: two, parameters: [{name: restore, in: query, schema: {type: string}}], responses: {"200": {description: ok}}}
    """, [], None),
    ("fragments asking for the same parameters are an error", """\
      /b#uploads:
        post: {operationId: one, parameters: [{name: uploads, in: query, schema: {type: string}}], responses: {"200": {description: ok}}}
      /b?uploads:
        post: {operationId: two, responses: {"200": {description: ok}}}
    """, ["GW082"], "/paths/~1b?uploads"),
]


@pytest.mark.parametrize("name,paths,codes,pointer", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_same_shapes_and_fragments(tmp_path, name, paths, codes, pointer):
    g = build(tmp_path, SHAPES + textwrap.indent(textwrap.dedent(paths), "      "))
    p, diags = plan.plan(g)
    errors = [d for d in diags if d.is_error]
    assert [d.code for d in errors] == codes
    if errors:
        assert p is None and errors[0].pointer == pointer
        assert "'one'" in errors[0].message or "'update'" in errors[0].message or "'share'" in errors[0].message
    else:
        assert len(p.routes) == 1
        assert {d.code for d in diags} <= {"GW080", "GW081"} and diags, "a warning says the description breaks the rule"


def test_fragments_select_by_header_and_query(tmp_path):
    g = build(tmp_path, SHAPES + textwrap.indent(textwrap.dedent("""\
      /#X-Amz-Target=Svc.A:
        post: {operationId: a, parameters: [{name: X-Amz-Target, in: header, schema: {type: string}}], responses: {"200": {description: ok}}}
      /#X-Amz-Target=Svc.B:
        post: {operationId: b, parameters: [{name: x-amz-target, in: header, schema: {type: string}}], responses: {"200": {description: ok}}}
      /w/{p}:
        put: {operationId: plain, responses: {"200": {description: ok}}}
      /w/{path}#op=CREATE&overwrite:
        put: {operationId: create2, parameters: [{name: op, in: query, schema: {type: string}}, {name: overwrite, in: query, schema: {type: string}}], responses: {"200": {description: ok}}}
      /w/{path}#op=CREATE:
        put: {operationId: create, parameters: [{name: op, in: query, schema: {type: string}}], responses: {"200": {description: ok}}}
    """), "      "))
    p, diags = plan.plan(g)
    assert not [d for d in diags if d.is_error], diags
    data = p.route_data()
    root = next(r for r in data["routes"] if r["path"] == "/")
    sel = root["methods"]["POST"]
    assert [c["when"] for c in sel["choices"]] == [[["h", "http_x_amz_target", "Svc.A"]], [["h", "http_x_amz_target", "Svc.B"]]]
    assert sel["fallback"] is False and sel["expects"] == "the X-Amz-Target header"
    w = next(r for r in data["routes"] if r["path"].startswith("/w/"))["methods"]["PUT"]
    ids = [data["operations"][c["op"] - 1]["id"] for c in w["choices"]]
    assert ids == ["create2", "create"], "the fragment with more conditions is tried first"
    assert data["operations"][w["fallback"] - 1]["id"] == "plain"
    assert w["choices"][0]["when"] == [["q", "op", "CREATE"], ["q", "overwrite", True]]


def test_every_server_base_path_is_served(tmp_path):
    g = build(tmp_path, """\
        openapi: 3.0.3
        info: {title: t, version: "1"}
        servers: [{url: "https://a.example.com/"}, {url: "/api/do"}, {url: "https://b.example.com/api/do/"}]
        x-gateway: {upstreams: {a: {servers: ["http://10.0.0.1"]}}, upstream: a}
        paths:
          /x: {get: {responses: {"200": {description: ok}}}}
        """)
    assert g.base_paths == ("", "/api/do")
    p, _ = plan.plan(g)
    assert p.route_data()["base_paths"] == ["/api/do", ""], "longest first"


def test_paths_extensions_are_not_paths(tmp_path):
    (tmp_path / "api.yaml").write_text(textwrap.dedent(SHAPES) + "  x-codegen-contextRoot: /apis/registry/v2\n  /x: {get: {responses: {'200': {description: ok}}}}\n")
    result = pipeline.check(str(tmp_path / "api.yaml"), structural=False)  # openapi-spec-validator trips on it (GW010)
    assert result.ok, result.diagnostics
    assert [r.template.text for r in result.plan.routes] == ["/x"]
