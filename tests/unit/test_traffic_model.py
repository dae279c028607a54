"""The traffic model and plan: units, limit ids, and which limits nginx enforces natively."""
import json
import textwrap

import pytest

from gwc.load import load
from gwc.model import build
from gwc.plan import plan
from gwc.traffic import RateLimit

BASE = """
openapi: 3.1.0
info: {title: T, version: "1"}
x-gateway:
  upstreams: {a: {servers: ["http://127.0.0.1:9"]}}
  upstream: a
%s
paths:
  /pets:
    get:
      operationId: listPets
%s
      responses: {"200": {description: ok}}
  /cats:
    get:
      operationId: listCats
      responses: {"200": {description: ok}}
"""


def built(tmp_path, root: str, op: str = ""):
    spec = tmp_path / "api.yaml"
    spec.write_text(BASE % (textwrap.indent(textwrap.dedent(root), "  "), textwrap.indent(textwrap.dedent(op), "      ")))
    doc, diags = load(str(spec))
    assert doc is not None, diags
    gateway, diags = build(doc)
    assert not [d for d in diags if d.is_error], [str(d) for d in diags]
    the_plan, diags = plan(gateway)
    assert the_plan is not None, [str(d) for d in diags]
    return gateway, the_plan


def limit(rate, per, burst=1, key="ip", scope="node"):
    return RateLimit("x", "n", rate, per, burst, key, "", scope)


@pytest.mark.parametrize(
    "rate,per,expected",
    [
        (100, "s", "100r/s"),
        (600, "min", "600r/m"),
        (3, "min", "3r/m"),  # 50 per 1000 s
        (7, "min", None),  # 116.67 per 1000 s: limit_req would round it
        (1800, "h", "30r/m"),
        (5000, "h", None),
    ],
)
def test_native_rate_only_when_exact(rate, per, expected):
    assert limit(rate, per).nginx_rate() == expected


def test_bucket_units():
    lim = limit(20, "s", burst=0)
    assert lim.capacity == 1 and lim.interval_ms == 50.0 and lim.retry_after_s == 1
    assert limit(2, "min").retry_after_s == 30


def test_native_needs_node_scope_a_native_key_and_no_headers():
    assert limit(10, "s").native("none")
    assert not limit(10, "s").native("ietf")
    assert not limit(10, "s", key="consumer").native("none")
    assert not limit(10, "s", scope="fleet").native("none")


def test_default_burst_is_one_second_of_the_rate(tmp_path):
    gateway, _ = built(tmp_path, "rate_limit: [{rate: 50/s}, {rate: 30/min, name: slow}]")
    fast, slow = gateway.operations[0].limits
    assert (fast.burst, fast.name) == (50, "limit-1")
    assert (slow.burst, slow.capacity) == (1, 1)


def test_a_root_limit_is_one_bucket_across_operations_and_an_operation_limit_its_own(tmp_path):
    gateway, _ = built(tmp_path, "rate_limit: {rate: 10/s}", "x-gateway: {rate_limit: {rate: 10/s}}")
    pets, cats = gateway.operations
    assert pets.limits[0].id != cats.limits[0].id  # same settings, different place
    gateway2, _ = built(tmp_path, "rate_limit: {rate: 10/s}", "x-gateway: {rate_limit: {rate: 10/s}}")
    assert [op.limits[0].id for op in gateway2.operations] == [pets.limits[0].id, cats.limits[0].id]


def test_changing_a_limit_changes_only_its_id(tmp_path):
    root = "rate_limit: [{name: a, rate: 10/s}, {name: b, rate: 20/s}]"
    g1, _ = built(tmp_path, root)
    g2, _ = built(tmp_path, root.replace("20/s", "25/s"))
    a1, b1 = g1.operations[0].limits
    a2, b2 = g2.operations[0].limits
    assert a1.id == a2.id and b1.id != b2.id


def test_native_limits_leave_lua_out_of_the_location(tmp_path):
    _, the_plan = built(tmp_path, "rate_limit_headers: none\nrate_limit: {rate: 10/s, key: ip}")
    loc = the_plan.locations[0]
    assert not loc.lua_access and [l.key for l in loc.native_limits] == ["ip"]
    assert [(z.key, z.rate) for z in the_plan.limit_zones] == [("$binary_remote_addr", "10r/s")]
    assert "traffic" not in the_plan.access_data()


def test_lua_limits_reach_access_data(tmp_path):
    _, the_plan = built(tmp_path, "rate_limit: {rate: 10/s, key: header.X-Tenant, burst: 4}")
    data = the_plan.access_data()
    entry = data["operations"]["listPets"]["limits"][0]
    assert {k: entry[k] for k in ("key", "arg", "capacity", "interval", "q", "w", "scope")} == {
        "key": "header", "arg": "x_tenant", "capacity": 4, "interval": 100.0, "q": 10, "w": 1, "scope": "node"}
    assert data["traffic"]["headers"] == "ietf"
    assert all(loc.lua_access and loc.rate_headers == "ietf" for loc in the_plan.locations)
    json.dumps(data)  # JSON-ready


def test_plan_scope_follows_redis(tmp_path):
    gateway, _ = built(tmp_path, """\
        redis: {url: "redis://127.0.0.1:6379/1"}
        plans: {free: {rate: 5/s, quota: {limit: 10, period: week, offset: 1}}, local: {rate: 1/s, scope: node}}
        """)
    plans = {p.name: p for p in gateway.traffic.plans}
    assert plans["free"].rate.scope == "fleet" and plans["free"].quota.scope == "fleet"
    assert plans["local"].rate.scope == "node"
    assert plans["local"].quota is None
    assert plans["free"].quota.offset == 1


def test_limit_ids_do_not_depend_on_where_the_build_runs(tmp_path, monkeypatch):
    gateway, _ = built(tmp_path, "rate_limit: {rate: 10/s}")
    monkeypatch.chdir(tmp_path)
    doc, _ = load("api.yaml")  # the same file, named relative to another working directory
    again, _ = build(doc)
    assert [op.limits[0].id for op in again.operations] == [op.limits[0].id for op in gateway.operations]
