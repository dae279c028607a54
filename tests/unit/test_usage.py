"""Usage reports (gwc.usage and `gwc usage`) and the status listener's model: filtering, formatting, key parsing,
one-line failures, and the build errors of x-gateway.status. The live counters are in tests/live/test_usage_live.py."""
import json
import re
import subprocess
import sys

import crossplane
import pytest

from gwc import pipeline, usage
from gwc.render import RenderOptions
from gwc.usage import Usage
from support.processes import free_port

GWC = [sys.executable, "-m", "gwc.cli"]
DAY = 1796169600  # 2026-12-02T00:00:00Z
MONTH = (1796083200, 1798761600)  # December 2026

ROWS = [
    Usage("bob", "pro", 3, 1000, *MONTH),
    Usage("alice", "free", 5, 5, DAY, DAY + 86400),
    Usage("carol", "free", 1, 5, DAY, DAY + 86400),
    Usage("alice", "pro", 7, 1000, *MONTH),
]


def run(*args, env=None):
    return subprocess.run([*GWC, *args], capture_output=True, text=True, timeout=60, env=env)


# --- records, filters ---------------------------------------------------------------
def test_record_data_has_iso_and_epoch_times():
    assert ROWS[1].data() == {
        "consumer": "alice", "plan": "free", "used": 5, "limit": 5, "remaining": 0,
        "period_start": "2026-12-02T00:00:00Z", "period_start_epoch": DAY,
        "reset": "2026-12-03T00:00:00Z", "reset_epoch": DAY + 86400,
    }


def test_remaining_never_below_zero_after_a_lowered_limit():
    assert Usage("x", "free", 9, 5, DAY, DAY + 86400).remaining == 0


SELECT_CASES = [
    ({}, [("alice", "free"), ("alice", "pro"), ("bob", "pro"), ("carol", "free")]),
    ({"plan": "free"}, [("alice", "free"), ("carol", "free")]),
    ({"consumer": "alice"}, [("alice", "free"), ("alice", "pro")]),
    ({"plan": "pro", "consumer": "alice"}, [("alice", "pro")]),
    ({"plan": "gold"}, []),
    ({"consumer": "nobody"}, []),
]


@pytest.mark.parametrize("filters,expected", SELECT_CASES, ids=[json.dumps(c[0]) for c in SELECT_CASES])
def test_select_filters_and_sorts_by_consumer_then_plan(filters, expected):
    assert [(r.consumer, r.plan) for r in usage.select(ROWS, **filters)] == expected


def test_current_drops_periods_that_do_not_contain_now():
    lingering = Usage("alice", "free", 5, 5, DAY - 86400, DAY)  # yesterday's hash lives a minute past its end
    future = Usage("alice", "free", 1, 5, DAY + 86400, DAY + 2 * 86400)
    now = DAY + 30
    assert usage.current([lingering, ROWS[1], future], now) == [ROWS[1]]
    assert usage.current([ROWS[1]], DAY) == [ROWS[1]]  # the start is in the period, the end is not
    assert usage.current([ROWS[1]], DAY + 86400) == []


# --- formatting ---------------------------------------------------------------------
def test_table_columns_are_aligned():
    text = usage.render_table(usage.select(ROWS + [Usage("a-very-long-consumer@example.com", "pro", 12345, 100000, *MONTH)]))
    lines = text.split("\n")
    assert lines[0].split() == ["consumer", "plan", "used", "limit", "remaining", "resets_at"]
    spans = [[(m.start(), m.end()) for m in re.finditer(r"\S+", line)] for line in lines]
    for row in spans[1:]:
        assert len(row) == 6
        for column, (start, end), (head_start, head_end) in zip(usage.COLUMNS, row, spans[0]):
            if column in ("used", "limit", "remaining"):
                assert end == head_end, text
            else:
                assert start == head_start, text
    assert lines[1].split() == ["a-very-long-consumer@example.com", "pro", "12345", "100000", "87655", "2027-01-01T00:00:00Z"]
    assert all(line == line.rstrip() for line in lines)


def test_table_without_rows_is_the_header():
    assert usage.render_table([]) == "consumer  plan  used  limit  remaining  resets_at"


def test_json_report():
    data = json.loads(usage.render(usage.select(ROWS, plan="free"), "json", "fleet", DAY + 60))
    assert data["scope"] == "fleet" and data["time"] == "2026-12-02T00:01:00Z" and data["time_epoch"] == DAY + 60
    assert [(r["consumer"], r["used"], r["remaining"]) for r in data["usage"]] == [("alice", 5, 0), ("carol", 1, 4)]


# --- Redis keys ---------------------------------------------------------------------
KEY_CASES = [
    ("gwc:{c:alice}:q:free:1796169600", ("alice", "free", 1796169600)),
    ("gwc:{c:a.b_c@d-e}:q:pro-2:1796083200", ("a.b_c@d-e", "pro-2", 1796083200)),
    ("gwc:{ip:10.0.0.7}:q:free:1796169600", ("ip:10.0.0.7", "free", 1796169600)),
    ("gwc:{ip:2001:db8::1}:q:free:1796169600", ("ip:2001:db8::1", "free", 1796169600)),
    ("gwc:{c:alice}:r:3f2a9c1d", None),  # a rate bucket
    ("other:{c:alice}:q:free:1796169600", None),  # another API's prefix
    ("gwc:{c:alice}:q:free:soon", None),
    ("gwc:{r:listPets}:q:free:1796169600", None),  # no quota is keyed by route
]


@pytest.mark.parametrize("key,expected", KEY_CASES, ids=[c[0] for c in KEY_CASES])
def test_quota_keys_are_recognised(key, expected):
    m = usage.key_pattern("gwc").match(key)
    if expected is None:
        assert m is None
        return
    row = usage.parse_hash(m, ["2", "5", "1796256000"])
    assert (row.consumer, row.plan, row.period_start) == expected
    assert (row.used, row.limit, row.reset) == (2, 5, 1796256000)


def test_a_hash_the_script_did_not_write_is_skipped():
    m = usage.key_pattern("gwc").match("gwc:{c:alice}:q:free:1796169600")
    assert usage.parse_hash(m, [None, None, None]) is None
    assert usage.parse_hash(m, ["1", "x", "2"]) is None


def test_the_prefix_is_literal_in_the_pattern():
    assert usage.key_pattern("my.api").match("myXapi:{c:a}:q:free:1") is None
    assert usage.key_pattern("my.api").match("my.api:{c:a}:q:free:1") is not None


def test_messages_never_show_a_password():
    assert usage.redacted("redis://:hunter2@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert usage.redacted("rediss://me:hunter2@redis.example:6380") == "rediss://me:***@redis.example:6380"
    assert usage.redacted("redis://127.0.0.1:6379") == "redis://127.0.0.1:6379"


def test_status_endpoint():
    assert usage.status_endpoint("http://127.0.0.1:9145") == "http://127.0.0.1:9145/usage"
    assert usage.status_endpoint("http://127.0.0.1:9145/") == "http://127.0.0.1:9145/usage"
    assert usage.status_endpoint("http://127.0.0.1:9145/usage") == "http://127.0.0.1:9145/usage"


# --- the command line -----------------------------------------------------------------
@pytest.mark.parametrize("args", [[], ["--redis", "redis://127.0.0.1:1", "--status", "http://127.0.0.1:1"],
                                  ["--status", "http://127.0.0.1:1", "--cluster"]])
def test_one_source_is_required(args):
    proc = run("usage", *args)
    assert proc.returncode == 2 and ("exactly one of" in proc.stderr or "--redis only" in proc.stderr), proc.stderr


def test_a_missing_password_variable_is_a_usage_error():
    proc = run("usage", "--redis", "redis://127.0.0.1:1", "--password-env", "GWC_TEST_SURELY_UNSET")
    assert proc.returncode == 2 and "GWC_TEST_SURELY_UNSET" in proc.stderr


@pytest.mark.parametrize("source", [
    ["--redis", "redis://:hunter2@127.0.0.1:{port}/0"],
    ["--redis", "redis://127.0.0.1:{port}", "--cluster"],
    ["--status", "http://127.0.0.1:{port}"],
    ["--status", "not a url"],
], ids=["redis", "cluster", "status", "bad-url"])
def test_an_unreachable_source_is_one_line_and_exit_1(source):
    port = free_port()  # nothing listens there
    proc = run("usage", *[a.replace("{port}", str(port)) for a in source])
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("gwc: cannot read usage from ")
    assert "Traceback" not in proc.stderr and "hunter2" not in proc.stderr


# --- x-gateway.status ---------------------------------------------------------------------
SPEC = """\
openapi: 3.0.3
info: {title: t, version: "1"}
x-gateway:
  listen: ["127.0.0.1:8080"]
__STATUS__
paths:
  /a:
    get:
      x-gateway: {mock: {body: ok}}
      responses: {"200": {description: ok}}
"""

STATUS_ERRORS = [
    ("  status: {listen: 'nowhere'}", "GW094", "/x-gateway/status/listen", "invalid status listen address"),
    ("  status: {listen: '127.0.0.1:70000'}", "GW094", "/x-gateway/status/listen", "port must be 1-65535"),
    ("  status: {listen: '127.0.0.2:8080'}", "GW094", "/x-gateway/status/listen", "public listener"),
    ("  status: {listen: '0.0.0.0:9145'}", "GW094", "/x-gateway/status/listen", "allow"),
    ("  status: {listen: '9145'}", "GW094", "/x-gateway/status/listen", "allow"),
    ("  status: {listen: '10.1.2.3:9145'}", "GW094", "/x-gateway/status/listen", "allow"),
    ("  status: {allow: [10.0.0.0/33]}", "GW047", "/x-gateway/status/allow/0", "CIDR"),
    ("  status: {listen: '127.0.0.1:9145', unknown: 1}", "GW020", None, ""),
]


def check(tmp_path, status: str):
    (tmp_path / "api.yaml").write_text(SPEC.replace("__STATUS__", status))
    return pipeline.check(str(tmp_path / "api.yaml"), structural=False)


@pytest.mark.parametrize("status,code,pointer,text", STATUS_ERRORS, ids=[c[0].strip() for c in STATUS_ERRORS])
def test_status_listener_build_errors_are_located(tmp_path, status, code, pointer, text):
    result = check(tmp_path, status)
    assert not result.ok
    found = [d for d in result.diagnostics if d.code == code]
    assert found, [d.format_text() for d in result.diagnostics]
    if pointer is not None:
        assert found[0].pointer == pointer and found[0].line == 5, found[0].format_text()
    assert text in found[0].message


def test_a_status_port_equal_to_a_tls_listener_is_refused(tmp_path):
    result = check(tmp_path, "  tls: {listen: ['127.0.0.1:8443'], certificate: /c.pem, key: /k.pem}\n  status: {listen: '127.0.0.1:8443'}")
    assert [d.code for d in result.diagnostics if d.code == "GW094"] == ["GW094"]


@pytest.mark.parametrize("status,listen,allow", [
    ("  status: {}", "127.0.0.1:9145", ("127.0.0.1/32", "::1/128")),
    ("  status: {listen: '[::1]:9200'}", "[::1]:9200", ("127.0.0.1/32", "::1/128")),
    ("  status: {listen: 'localhost:9200'}", "localhost:9200", ("127.0.0.1/32", "::1/128")),
    ("  status: {listen: '0.0.0.0:9145', allow: [10.0.0.0/8, 192.168.1.5]}", "0.0.0.0:9145", ("10.0.0.0/8", "192.168.1.5/32")),
])
def test_status_listener_model(tmp_path, status, listen, allow):
    result = check(tmp_path, status)
    assert result.ok, [d.format_text() for d in result.diagnostics]
    st = result.plan.gateway.status
    assert (st.listen.address, st.allow) == (listen, allow)


def _servers(tmp_path, status):
    (tmp_path / "api.yaml").write_text(SPEC.replace("__STATUS__", status))
    result = pipeline.build(str(tmp_path / "api.yaml"), RenderOptions(), None)
    assert result.ok, [d.format_text() for d in result.diagnostics]
    conf = tmp_path / "nginx.conf"
    conf.write_bytes(result.files["nginx.conf"])
    parsed = crossplane.parse(str(conf), single=True, strict=False, check_ctx=False, check_args=False)
    http = next(d for d in parsed["config"][0]["parsed"] if d["directive"] == "http")["block"]
    return http


def test_status_server_is_rendered_apart_from_the_public_one(tmp_path):
    http = _servers(tmp_path, "  status: {listen: '127.0.0.1:9145', allow: [10.0.0.0/8]}")
    servers = [d["block"] for d in http if d["directive"] == "server"]
    assert len(servers) == 2
    public, status = servers
    assert [d["args"] for d in public if d["directive"] == "listen"] == [["127.0.0.1:8080"]]
    assert [d["args"] for d in status if d["directive"] == "listen"] == [["127.0.0.1:9145"]]
    geo = next(d for d in http if d["directive"] == "geo" and d["args"] == ["$gw_status_allowed"])
    assert [d["directive"] for d in geo["block"]] == ["default", "10.0.0.0/8"]
    guard = next(d for d in status if d["directive"] == "if")
    assert guard["args"] == ["$gw_status_allowed", "=", "0"] and guard["block"][0]["args"][0] == "403"
    locations = {tuple(d["args"]): d["block"] for d in status if d["directive"] == "location"}
    assert set(locations) == {("=", "/healthz"), ("=", "/usage"), ("/",)}
    assert locations[("=", "/usage")][0]["directive"] == "content_by_lua_block"
    assert not any(d["directive"] == "location" and "/usage" in d["args"] for d in public)


def test_no_status_server_without_x_gateway_status(tmp_path):
    http = _servers(tmp_path, "")
    assert len([d for d in http if d["directive"] == "server"]) == 1
    assert not any(d["directive"] == "geo" and d["args"] == ["$gw_status_allowed"] for d in http)
