"""Rebuilding in place and reloading nginx: new routes take effect, no request fails."""
import json
import subprocess
import sys
import threading
import time

import pytest

from support.processes import Nginx, free_port, raw_request

pytestmark = pytest.mark.live

SPEC = """\
openapi: 3.0.3
info: {title: reload, version: "1"}
paths:
  /version:
    get:
      x-gateway: {mock: {body: {version: __V__}}}
      responses: {"200": {description: ok}}
"""


def build(tmp_path, version, port):
    (tmp_path / "api.yaml").write_text(SPEC.replace("__V__", str(version)) + ("" if version == 1 else "  /added:\n    get:\n      x-gateway: {mock: {body: added}}\n      responses: {'200': {description: ok}}\n"))
    proc = subprocess.run([sys.executable, "-m", "gwc.cli", "build", "api.yaml", "-o", "out", "--listen", f"127.0.0.1:{port}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def get(port, path):
    status, _, body = raw_request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    return status, body


def test_rebuild_in_place_then_reload(tmp_path):
    port = free_port()
    build(tmp_path, 1, port)
    with Nginx(tmp_path / "out").start([port]) as nginx:
        assert json.loads(get(port, "/version")[1]) == {"version": 1}
        assert get(port, "/added")[0] == 404

        statuses = []
        stop = threading.Event()

        def load():
            while not stop.is_set():
                statuses.append(get(port, "/version")[0])

        worker = threading.Thread(target=load)
        worker.start()
        try:
            build(tmp_path, 2, port)
            assert (tmp_path / "out/logs/nginx.pid").is_file(), "the running master's pid file survives a rebuild"
            reload = subprocess.run([nginx.binary, "-p", str(tmp_path / "out") + "/", "-c", "nginx.conf", "-s", "reload"],
                                    capture_output=True, text=True, timeout=30)
            assert reload.returncode == 0, reload.stderr
            # Old workers finish what they accepted before they exit, so the new
            # routes win once five answers in a row come from new workers.
            deadline = time.monotonic() + 10
            streak = 0
            while streak < 5:
                assert time.monotonic() < deadline, "the reload never took effect"
                fresh = json.loads(get(port, "/version")[1]) == {"version": 2} and get(port, "/added") == (200, b"added")
                streak = streak + 1 if fresh else 0
                time.sleep(0.02)
        finally:
            stop.set()
            worker.join(timeout=10)
        assert statuses and set(statuses) == {200}, f"{len(statuses)} requests during the reload: {sorted(set(statuses))}"
        assert "[emerg]" not in nginx.read_error_log()
