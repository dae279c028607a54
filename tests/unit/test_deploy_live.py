"""The documented deploy, live: `gwc build --check` into the running gateway's
directory, then `nginx -p DIR -c nginx.conf -s reload`, again and again."""
import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support.processes import Nginx, echo_backend, free_port

pytestmark = [pytest.mark.live, pytest.mark.slow]

SPEC = """\
openapi: 3.0.3
info: {title: deploy, version: "1"}
x-gateway:
  keys: keys.yaml
  upstreams: {echo: {servers: ["http://__UPSTREAM__"]}}
  upstream: echo
components:
  securitySchemes:
    key: {type: apiKey, in: header, name: X-API-Key}
security: [{key: []}]
paths:
  /version:
    get:
      security: []
      x-gateway: {mock: {body: {version: __V__}}}
      responses: {"200": {description: ok}}
  /echo:
    get:
      security: []
      responses: {"200": {description: ok}}
  /private:
    get:
      x-gateway: {mock: {body: private}}
      responses: {"200": {description: ok}}
"""
ADDED = """\
  /added:
    get:
      security: []
      x-gateway: {mock: {body: added}}
      responses: {"200": {description: ok}}
"""
# gwc refuses it: GW020, an unknown x-gateway key.
BROKEN = ADDED.replace("{mock: {body: added}}", "{mock: {body: added}, no_such_setting: 1}")
RELOADS = 20


class Deploy:
    def __init__(self, root: Path, port: int, backend: int):
        self.root, self.port, self.backend = root, port, backend
        self.out = root / "out"

    def gwc(self, *args):
        return subprocess.run([sys.executable, "-m", "gwc.cli", *args], cwd=self.root, capture_output=True, text=True, timeout=60)

    def build(self, version, extra="", upstream=None):
        spec = SPEC.replace("__V__", str(version)).replace("__UPSTREAM__", upstream or f"127.0.0.1:{self.backend}") + extra
        (self.root / "api.yaml").write_text(spec)
        return self.gwc("build", "api.yaml", "-o", "out", "--check", "--listen", f"127.0.0.1:{self.port}")

    def reload(self, nginx):
        proc = subprocess.run([nginx.binary, "-p", str(self.out) + "/", "-c", "nginx.conf", "-s", "reload"],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr

    def get(self, path, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def wait_for(self, path, body, deadline_s=10.0):
        """Old workers finish what they accepted first: wait for five new answers in a row."""
        end, streak = time.monotonic() + deadline_s, 0
        while streak < 5:
            assert time.monotonic() < end, f"{path} never answered {body!r} after the reload"
            streak = streak + 1 if self.get(path) == (200, body) else 0
            time.sleep(0.01)

    def snapshot(self):
        """Every entry of the output (not the running server's logs/ and tmp/): link targets and file hashes."""
        out = {}
        for base, dirs, names in os.walk(self.out):
            rel_base = Path(base).relative_to(self.out)
            if rel_base.parts[:1] in (("logs",), ("tmp",)):
                continue
            for name in dirs + names:
                path = Path(base) / name
                rel = (rel_base / name).as_posix()
                if path.is_symlink():
                    out[rel] = ("link", os.readlink(path))
                elif path.is_file():
                    out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        return out


def version_body(v):
    return json.dumps({"version": v}).encode()


class Load:
    """Steady traffic during the deploys: one keep-alive client, one client opening a
    connection per request, and a reader opening the output's files in a tight loop."""

    def __init__(self, deploy: Deploy, deadline_s: float):
        self.deploy = deploy
        self.end = time.monotonic() + deadline_s
        self.stop = threading.Event()
        self.failures, self.missing = [], []
        self.counts = {"keepalive": 0, "new_connection": 0, "retried": 0, "opens": 0}
        self.threads = [threading.Thread(target=f) for f in (self.keepalive, self.new_connections, self.opener)]

    def running(self):
        return not self.stop.is_set() and time.monotonic() < self.end

    def keepalive(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.deploy.port, timeout=5)
        while self.running():
            reused = conn.sock is not None
            try:
                conn.request("GET", "/version")
                response = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if not reused:
                    self.failures.append(f"keep-alive, new connection: {exc!r}")
                    continue
                # A worker that is shutting down closes its idle keep-alive
                # connections; a request crossing that close got no byte of an
                # answer, and HTTP/1.1 clients retry it on a new connection.
                self.counts["retried"] += 1
                continue
            except Exception as exc:  # noqa: BLE001 (every other error is a failed request)
                conn.close()
                self.failures.append(f"keep-alive: {exc!r}")
                continue
            try:
                status, _ = response.status, response.read()
            except Exception as exc:  # noqa: BLE001 (an answer cut short)
                conn.close()
                self.failures.append(f"keep-alive, reading the answer: {exc!r}")
                continue
            self.counts["keepalive"] += 1
            if status != 200:
                self.failures.append(f"keep-alive: status {status}")
        conn.close()

    def new_connections(self):
        while self.running():
            try:
                status, body = self.deploy.get("/echo", {"Connection": "close"})
            except Exception as exc:  # noqa: BLE001
                self.failures.append(f"new connection: {exc!r}")
                continue
            self.counts["new_connection"] += 1
            if status != 200 or json.loads(body)["path"] != "/echo":
                self.failures.append(f"new connection: status {status}")

    def opener(self):
        out = self.deploy.out
        names = ("nginx.conf", "lua/gwc/data/routes.json", "manifest.json", "keys.json", "logs/nginx.pid")
        while self.running():
            for name in names:
                try:
                    with open(out / name, "rb"):
                        pass
                except FileNotFoundError:
                    self.missing.append(name)
                self.counts["opens"] += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


def test_documented_deploy_sequence(tmp_path):
    port = free_port()
    with echo_backend() as backend:
        deploy = Deploy(tmp_path, port, backend)
        alice = deploy.gwc("keys", "new", "--id", "alice", "--plan", "free", "--file", "keys.yaml")
        assert alice.returncode == 0, alice.stderr
        alice_key = alice.stdout.strip().splitlines()[-1]

        # 1. First deploy, start, traffic.
        first = deploy.build(1)
        assert first.returncode == 0, first.stderr
        with Nginx(deploy.out).start([port]) as nginx:
            assert deploy.get("/version") == (200, version_body(1))
            assert deploy.get("/echo")[0] == 200
            assert deploy.get("/private", {"X-API-Key": alice_key}) == (200, b"private")
            assert deploy.get("/added")[0] == 404

            # 2. A new route, built into the same directory, reloaded.
            second = deploy.build(2, ADDED)
            assert second.returncode == 0, second.stderr
            deploy.reload(nginx)
            deploy.wait_for("/added", b"added")
            assert deploy.gwc("check", "out").returncode == 0

            # Keys edited in the deployed copy take effect on reload.
            bob = deploy.gwc("keys", "new", "--id", "bob", "--plan", "free", "--file", "out/keys.json")
            assert bob.returncode == 0, bob.stderr
            bob_key = bob.stdout.strip().splitlines()[-1]
            assert deploy.get("/private", {"X-API-Key": bob_key})[0] == 401
            deploy.reload(nginx)
            end = time.monotonic() + 10
            while deploy.get("/private", {"X-API-Key": bob_key})[0] != 200:
                assert time.monotonic() < end, "bob's key never took effect"
                time.sleep(0.02)

            # 3. A spec gwc refuses, and 4. one nginx -t refuses: DIR stays as it was.
            before = deploy.snapshot()
            broken = deploy.build(3, BROKEN)
            assert broken.returncode == 1 and "error[GW020]" in broken.stderr, broken.stderr
            assert deploy.snapshot() == before
            rejected = deploy.build(3, ADDED, upstream="no-such-host.invalid:80")
            assert rejected.returncode == 1 and "error[GW060]" in rejected.stderr and "no-such-host.invalid" in rejected.stderr, rejected.stderr
            # The diagnostic names the deployed path, not the deleted staging copy.
            assert ".generations" not in rejected.stderr and "nginx.conf" in rejected.stderr, rejected.stderr
            assert deploy.snapshot() == before
            assert deploy.get("/added") == (200, b"added")
            assert deploy.get("/private", {"X-API-Key": bob_key})[0] == 200
            assert "Traceback" not in broken.stderr + rejected.stderr
            assert sorted(p.name for p in tmp_path.iterdir()) == ["api.yaml", "keys.yaml", "out"], "no staging left beside DIR"

            # 5. Redeploy and reload over and over under load.
            with Load(deploy, deadline_s=120) as load:
                for version in range(10, 10 + RELOADS):
                    built = deploy.build(version, ADDED)
                    assert built.returncode == 0, built.stderr
                    deploy.reload(nginx)
                deploy.wait_for("/version", version_body(10 + RELOADS - 1))
            print(f"\n{RELOADS} deploys under load: {load.counts}")
            assert load.failures == []
            assert load.missing == []
            assert load.counts["keepalive"] > RELOADS and load.counts["new_connection"] > RELOADS
            # The last build wrote keys.json from keys.yaml again (bob was only in the deployed copy).
            assert deploy.get("/private", {"X-API-Key": alice_key}) == (200, b"private")
            assert deploy.get("/private", {"X-API-Key": bob_key})[0] == 401
            assert len(list((deploy.out / ".generations").iterdir())) == 1
            assert deploy.gwc("check", "out").returncode == 0
            assert "[emerg]" not in nginx.read_error_log() and "[alert]" not in nginx.read_error_log()
