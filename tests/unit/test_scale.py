"""10,000 routes: the build stays linear and every route is reachable on real nginx."""
import json
import subprocess
import sys

import pytest

from support.processes import Nginx, echo_backend, free_port, raw_request

N_PATHS = 5000  # two operations each: 10,000 routes


def spec(backend_port):
    paths = {}
    for i in range(N_PATHS):
        paths[f"/svc{i}/items/{{id}}"] = {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {"responses": {"200": {"description": "ok"}}},
            "put": {"responses": {"200": {"description": "ok"}}},
        }
    paths["/{tenant}/status"] = {
        "parameters": [{"name": "tenant", "in": "path", "required": True, "schema": {"type": "string"}}],
        "get": {"x-gateway": {"mock": {"body": "tenant status"}}, "responses": {"200": {"description": "ok"}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "scale", "version": "1"},
        "x-gateway": {"upstreams": {"be": {"servers": [f"http://127.0.0.1:{backend_port}"]}}, "upstream": "be"},
        "paths": paths,
    }


@pytest.mark.live
@pytest.mark.slow
def test_ten_thousand_routes(tmp_path):
    with echo_backend() as backend:
        (tmp_path / "api.json").write_text(json.dumps(spec(backend)))
        port = free_port()
        proc = subprocess.run([sys.executable, "-m", "gwc.cli", "build", "api.json", "-o", "out", "--listen", f"127.0.0.1:{port}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        conf = (tmp_path / "out/nginx.conf").read_text()
        assert conf.count("location = gw:") == 5, "10,000 operations share their locations"
        with Nginx(tmp_path / "out").start([port]) as nginx:
            cases = [
                ("GET", "/svc0/items/a", 200, "/svc0/items/a"),
                ("PUT", f"/svc{N_PATHS // 2}/items/b", 200, f"/svc{N_PATHS // 2}/items/b"),
                ("GET", f"/svc{N_PATHS - 1}/items/c?x=1", 200, f"/svc{N_PATHS - 1}/items/c?x=1"),
                ("DELETE", "/svc7/items/a", 405, None),
                ("GET", f"/svc{N_PATHS}/items/a", 404, None),
                ("GET", "/svc7/status", 200, None),
            ]
            for method, path, status, forwarded in cases:
                got, headers, body = raw_request(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                assert got == status, (method, path)
                if forwarded:
                    assert json.loads(body)["path"] == forwarded
            assert "[error]" not in nginx.read_error_log()
