"""Model defaults and merging; plan's precedence order, trie and shared locations."""
import textwrap

import pytest

from gwc import load, model, plan
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
    assert g.base_path == "/v2"
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
