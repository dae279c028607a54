"""Upstream behaviour on real nginx: retries, hashing, Host, timeouts, TLS verification."""
import contextlib
import json
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from support.certs import make_ca, make_server_cert
from support.processes import Nginx, closed_port, dropping_backend, echo_backend, free_port, raw_request

pytestmark = pytest.mark.live


@contextlib.contextmanager
def gateway(tmp_path, upstreams, paths=None):
    port = free_port()
    spec = {
        "openapi": "3.0.3",
        "info": {"title": "upstreams", "version": "1"},
        "x-gateway": {"nginx": {"worker_processes": 1}, "upstreams": upstreams, "upstream": sorted(upstreams)[0]},
        "paths": paths or {"/r": {"get": {"responses": {"200": {"description": "ok"}}}, "post": {"responses": {"200": {"description": "ok"}}}}},
    }
    (tmp_path / "api.yaml").write_text(yaml.safe_dump(spec))
    proc = subprocess.run([sys.executable, "-m", "gwc.cli", "build", "api.yaml", "-o", "out", "--listen", f"127.0.0.1:{port}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with Nginx(tmp_path / "out").start([port]) as nginx:
        yield port, nginx


def call(port, method="GET", path="/r", headers=""):
    req = f"{method} {path} HTTP/1.1\r\nHost: client.example\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    status, resp_headers, body = raw_request(port, req.encode())
    return status, resp_headers, (json.loads(body) if body and resp_headers.get("content-type", "").startswith("application/json") else body)


@pytest.mark.parametrize(
    "retries, expect_get, expect_post",
    [
        ({"count": 1}, {200: 6}, {200: 3, 502: 3}),  # a POST that reached a server is never sent twice
        ({"count": 1, "non_idempotent": True}, {200: 6}, {200: 6}),
        ({"count": 0}, {200: 3, 502: 3}, {200: 3, 502: 3}),
    ],
    ids=["idempotent-only", "non-idempotent-too", "off"],
)
def test_retries(tmp_path, retries, expect_get, expect_post):
    with dropping_backend() as dead, echo_backend("live") as live:
        up = {"servers": [f"http://127.0.0.1:{dead}", f"http://127.0.0.1:{live}"], "retries": retries, "max_fails": 0, "keepalive": 0}
        with gateway(tmp_path, {"be": up}) as (port, _):
            gets = Counter(call(port, "GET")[0] for _ in range(6))
            posts = Counter(call(port, "POST")[0] for _ in range(6))
    assert dict(gets) == expect_get
    assert dict(posts) == expect_post


def test_connect_failures_are_retried_even_for_post(tmp_path):
    """Nothing reached the server, so nginx may try the next one whatever the method."""
    dead = closed_port()
    with echo_backend("live") as live:
        up = {"servers": [f"http://127.0.0.1:{dead}", f"http://127.0.0.1:{live}"], "max_fails": 0}
        with gateway(tmp_path, {"be": up}) as (port, _):
            assert Counter(call(port, "POST")[0] for _ in range(6)) == {200: 6}


def test_failed_server_is_taken_out_for_fail_timeout(tmp_path):
    dead = closed_port()
    with echo_backend("live") as live:
        up = {"servers": [f"http://127.0.0.1:{dead}", f"http://127.0.0.1:{live}"], "retries": {"count": 0}, "max_fails": 1, "fail_timeout": "30s"}
        with gateway(tmp_path, {"be": up}) as (port, _):
            statuses = [call(port)[0] for _ in range(8)]
    assert statuses.count(502) == 1, statuses  # then the dead server is skipped for 30 s
    assert statuses[-6:] == [200] * 6


def test_hash_balancing_is_sticky_per_key(tmp_path):
    with echo_backend("A") as a, echo_backend("B") as b:
        up = {"servers": [f"http://127.0.0.1:{a}", f"http://127.0.0.1:{b}"], "balance": "hash", "hash_key": "header.X-User"}
        with gateway(tmp_path, {"be": up}) as (port, _):
            seen = {}
            for user in range(12):
                backends = {call(port, headers=f"X-User: user{user}\r\n")[2]["backend"] for _ in range(3)}
                assert len(backends) == 1, backends
                seen[user] = backends.pop()
    assert set(seen.values()) == {"A", "B"}, "twelve keys spread over both servers"


@pytest.mark.parametrize(
    "settings, expected_host",
    [({}, "127.0.0.1:{port}"), ({"host_header": "api.internal"}, "api.internal"), ({"preserve_host": True}, "client.example")],
    ids=["default", "host_header", "preserve_host"],
)
def test_host_header(tmp_path, settings, expected_host):
    with echo_backend() as backend:
        with gateway(tmp_path, {"be": {"servers": [f"http://127.0.0.1:{backend}"], **settings}}) as (port, _):
            status, headers, body = call(port)
    assert status == 200
    assert body["headers"]["host"] == expected_host.format(port=backend)
    assert body["headers"]["x-request-id"] == headers["x-request-id"]
    assert body["headers"]["x-forwarded-host"] == "client.example"


def test_read_timeout_is_a_504_problem(tmp_path):
    with echo_backend() as backend:
        up = {"servers": [f"http://127.0.0.1:{backend}"], "timeout": {"read": "300ms"}, "retries": {"count": 0}}
        with gateway(tmp_path, {"be": up}) as (port, _):
            status, headers, body = call(port, headers="X-Echo-Delay: 1.5\r\n")
    assert status == 504
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == 504 and problem["request_id"] == headers["x-request-id"]


@pytest.mark.parametrize(
    "tls, cert_names, expected",
    [
        ({"server_name": "backend.test"}, ["backend.test"], 200),
        ({"server_name": "other.test"}, ["backend.test"], 502),  # name mismatch
        ({"server_name": "backend.test", "use_other_ca": True}, ["backend.test"], 502),  # untrusted chain
        ({"server_name": "other.test", "verify": False}, ["backend.test"], 200),
    ],
    ids=["verified", "wrong-name", "untrusted-ca", "verify-off"],
)
def test_upstream_tls(tmp_path, tls, cert_names, expected):
    ca_path, ca_key, ca_cert = make_ca(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_ca_path, _, _ = make_ca(other_dir, cn="someone else")
    cert, key = make_server_cert(tmp_path, ca_key, ca_cert, cert_names)
    tls = dict(tls)
    trusted = other_ca_path if tls.pop("use_other_ca", False) else ca_path
    with echo_backend("tls", tls=(str(cert), str(key))) as backend:
        up = {"servers": [f"https://127.0.0.1:{backend}"], "retries": {"count": 0}, "tls": {**tls, "ca_file": str(trusted)}}
        with gateway(tmp_path, {"be": up}) as (port, nginx):
            status, headers, body = call(port)
            log = nginx.read_error_log()
    assert status == expected, log[-1500:]
    if expected == 200:
        assert body["backend"] == "tls"
    else:
        assert headers["content-type"] == "application/problem+json"
        assert "certificate" in log or "SSL" in log
