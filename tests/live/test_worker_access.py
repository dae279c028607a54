"""Runtime Lua modules must be usable by the worker processes, or nginx must refuse to start.

When nginx starts as root, its workers run as an unprivileged user that may
not be able to read DIR/lua (an output directory under a 0700 parent, such as
/root). Every runtime module must therefore be loaded by init_by_lua in the
master; a module required lazily in a worker turns each 404/405/mock into
nginx's HTML 500 page and a "module ... not found" Lua error.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

import harness
from gwc import runtime
from support.processes import Nginx, closed_port, free_port, raw_request

pytestmark = pytest.mark.live


def test_gateway_errors_do_not_depend_on_worker_file_access(backends):
    if os.geteuid() != 0:
        pytest.skip("nginx workers only change user when nginx starts as root")
    rt, _ = runtime.detect(allow_docker=False)
    with tempfile.TemporaryDirectory(prefix="gwc-private-") as private:  # mode 0700
        placeholders = {"__BACKEND_A__": str(backends["A"]), "__BACKEND_B__": str(backends["B"]), "__CLOSED_PORT__": str(closed_port())}
        spec = harness.render_spec("routing", placeholders, Path(private) / "spec")
        out = Path(private) / "out"
        port = free_port()
        harness.gwc_build(spec, out, f"127.0.0.1:{port}", rt.target)
        try:
            nginx = Nginx(out).start([port])
        except RuntimeError:
            return  # refusing to start is an acceptable, fail-fast outcome
        try:
            proxied = raw_request(port, b"GET /api/pets HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
            missing = raw_request(port, b"GET /api/nope HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
            mock = raw_request(port, b"GET /api/mock/text HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
        finally:
            nginx.stop()
        log = nginx.read_error_log()
    assert proxied[0] == 200
    assert (missing[0], missing[1].get("content-type")) == (404, "application/problem+json")
    assert (mock[0], mock[2]) == (200, b"pong")
    assert not harness.severe_lines(log), log[-1500:]
