"""Random request targets never produce a 5xx or a Lua error on real nginx."""
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.processes import Nginx, echo_backend, free_port, raw_request

pytestmark = pytest.mark.live

SPEC = """\
openapi: 3.0.3
info: {title: fuzz, version: "1"}
servers: [{url: /v1}]
x-gateway:
  routing: {trailing_slash: ignore}
  upstreams: {be: {servers: ["http://127.0.0.1:__PORT__"]}}
  upstream: be
paths:
  /pets/{id}:
    parameters: [{name: id, in: path, required: true, schema: {type: string}}]
    get: {x-gateway: {path: "/v2/{id}/x"}, responses: {"200": {description: ok}}}
  /pets/mine: {get: {responses: {"200": {description: ok}}}}
  /gists/{sid}.json:
    parameters: [{name: sid, in: path, required: true, schema: {type: string}}]
    get: {responses: {"200": {description: ok}}}
  /compare/{base}...{head}:
    parameters: [{name: base, in: path, required: true, schema: {type: string}}, {name: head, in: path, required: true, schema: {type: string}}]
    get: {responses: {"200": {description: ok}}}
  /files/{rest+}:
    parameters: [{name: rest, in: path, required: true, schema: {type: string}}]
    get: {x-gateway: {path: "/store/{rest}"}, responses: {"200": {description: ok}}}
  /mock: {post: {x-gateway: {mock: {body: {ok: true}}}, responses: {"200": {description: ok}}}}
"""

SEGMENTS = st.sampled_from(["v1", "pets", "mine", "gists", "compare", "files", "mock", "a.json", "x...y", "...", ".", "..",
                            "%2e", "%2E%2e", "%2F", "%5C", "%25", "%00", "%zz", "%", "%C3%A9", "é", "\\", "~", ";", "?", "#",
                            "%3F", "%23", '"', "<>", "{x}", "$x", "'", "`", "|", "^", "", " ", "%20", "+", "&", "="])
TARGETS = st.lists(SEGMENTS, min_size=0, max_size=7).map(lambda segs: "/" + "/".join(segs))
METHODS = st.sampled_from(["GET", "HEAD", "POST", "DELETE", "OPTIONS", "PATCH"])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    with echo_backend() as backend:
        (tmp / "api.yaml").write_text(SPEC.replace("__PORT__", str(backend)))
        port = free_port()
        proc = subprocess.run([sys.executable, "-m", "gwc.cli", "build", "api.yaml", "-o", "out", "--listen", f"127.0.0.1:{port}"],
                              cwd=tmp, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        with Nginx(tmp / "out").start([port]) as nginx:
            yield port, nginx
            log = nginx.read_error_log()
    bad = [l for l in log.splitlines() if any(k in l for k in ("[alert]", "[crit]", "[emerg]", "lua entry thread aborted", "runtime error"))]
    assert not bad, bad[:5]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=METHODS, target=TARGETS)
def test_random_targets_never_fail_the_gateway(gateway, method, target):
    port, _ = gateway
    request = f"{method} {target} HTTP/1.1\r\nHost: fuzz\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode("utf-8")
    status, headers, body = raw_request(port, request)
    assert status < 500, (target, status, body[:300])
    assert headers.get("x-request-id"), target
    if status >= 400:
        assert headers["content-type"] == "application/problem+json", (target, status, body[:200])
        if method != "HEAD":
            problem = json.loads(body)
            assert problem["status"] == status and problem["request_id"] == headers["x-request-id"]
    elif headers.get("x-backend") and method != "HEAD":
        forwarded = json.loads(body)["path"]
        assert forwarded.startswith(("/v2/", "/pets/mine", "/gists/", "/compare/", "/store/")), (target, forwarded)
        assert not any(c in forwarded for c in ' "<>\\^`{|}'), (target, forwarded)
        assert "/../" not in forwarded and "/./" not in forwarded and not forwarded.endswith("/..")
