"""The response cache (x-gateway.cache) against a real nginx, as data.

Case files are cases/cache/*.yaml, run in order on one gateway built from
specs/cache.yaml:

    cases:
      - name: one consumer's response never reaches another
        steps:
          - send:
              path: /me/__UNIQ__            # method (GET), headers
              key: alice                     # X-API-Key of a consumer in KEYS
              token: {claims: {sub: ann}}    # a JWT minted now (tests/auth/auth_tokens.py)
              reply: {cache_control: private, set_cookie: a=b, vary: X-V, expires: "...", status: 503, delay: 0.5}
            parallel: 6                      # send it this many times at once (threads)
            expect:
              status: 200
              cache: HIT                     # X-Cache-Status (null: absent)
              n: 1                           # the backend's count for this path in the body: which response came back
              calls: 1                       # the backend's count for this path after the step
          - sleep: 1.2
          - backend: down                    # stop (or `up`: start) the flaky upstream
          - invalidate: {operation: mine}    # POST /cache/invalidate on the status listener ({} for all)
            expect: {status: 200}
          - restart: true                    # stop nginx and start it again (the shared dicts are lost, the disk cache is not)

`reply` travels as X-Reply-* request headers: the backend answers with those
response headers (a hit ignores them, they are not in the key). `__UNIQ__` is
fresh per case, so cases never share an entry. Every response must carry
X-Request-Id, and the error log must stay free of [error] lines no case declared.
"""
from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import pytest
import yaml

import harness
from gwc import runtime
from support.processes import Nginx, free_port, log_since, parse_response, raw_request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "auth"))
import auth_runner  # noqa: E402
import auth_tokens  # noqa: E402

pytestmark = pytest.mark.live

LIVE_DIR = Path(__file__).resolve().parent
CASES_DIR = LIVE_DIR / "cases" / "cache"
SPEC_TEMPLATE = LIVE_DIR / "specs" / "cache.yaml"
CONSUMERS = ("alice", "bob", "carol")
STEP_KEYS = {"send", "parallel", "expect", "sleep", "backend", "invalidate", "restart", "log"}
SEND_KEYS = {"method", "path", "headers", "key", "token", "reply"}
EXPECT_KEYS = {"status", "cache", "n", "calls", "headers", "absent_headers", "upstream_headers"}
REPLY_HEADERS = {"cache_control": "Cache-Control", "set_cookie": "Set-Cookie", "vary": "Vary", "expires": "Expires"}


# --------------------------------------------------------------------------- the backend


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.connections.add(self.connection)  # type: ignore[attr-defined]

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        server = self.server
        with server.lock:  # type: ignore[attr-defined]
            n = server.counts.get(self.path, 0) + 1  # type: ignore[attr-defined]
            server.counts[self.path] = n  # type: ignore[attr-defined]
        delay = float(self.headers.get("X-Reply-Delay") or 0)
        if delay:
            time.sleep(min(delay, 5))
        body = json.dumps({"n": n, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(int(self.headers.get("X-Reply-Status") or 200))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name in REPLY_HEADERS.values():
            value = self.headers.get("X-Reply-" + name)
            if value:
                self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _handle

    def log_message(self, *args) -> None:
        pass


class Backend:
    """Counts requests per path (query included); can be stopped and started on its port."""

    def __init__(self, port: Optional[int] = None):
        self.port = port or free_port()
        self.counts: Dict[str, int] = {}
        self.lock = threading.Lock()
        self.server: Optional[ThreadingHTTPServer] = None
        self.start()

    def start(self) -> None:
        if self.server is not None:
            return
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.daemon_threads = True
        server.counts = self.counts  # type: ignore[attr-defined]
        server.lock = self.lock  # type: ignore[attr-defined]
        server.connections = set()  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.server = server

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            # Kept-alive connections too: the gateway must find the upstream down.
            with self.lock:
                for conn in self.server.connections:  # type: ignore[attr-defined]
                    try:
                        conn.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            self.server = None

    def count(self, path: str) -> int:
        with self.lock:
            return self.counts.get(path, 0)


# --------------------------------------------------------------------------- cases


def load_cases() -> List[Tuple[str, dict]]:
    out = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for case in doc["cases"]:
            for step in case["steps"]:
                assert set(step) <= STEP_KEYS, (case["name"], set(step) - STEP_KEYS)
                assert set(step.get("send") or {}) <= SEND_KEYS, (case["name"], step["send"])
                assert set(step.get("expect") or {}) <= EXPECT_KEYS, (case["name"], step["expect"])
            out.append((f"{path.stem}::{case['name']}", case))
    return out


CASES = load_cases()


class Gateway:
    def __init__(self, work: Path, backend: Backend, flaky: Backend, keyring: auth_tokens.KeyRing, target: str):
        self.dir = work / "cache-gw"
        self.dir.mkdir(parents=True)
        self.keys = {}
        for consumer in CONSUMERS:
            self.keys[consumer] = auth_runner.new_key(self.dir / "keys.yaml", consumer)
        self.port, self.status_port = free_port(), free_port()
        text = SPEC_TEMPLATE.read_text(encoding="utf-8")
        for k, v in {"__BACKEND__": str(backend.port), "__DOWN__": str(flaky.port), "__STATUS__": str(self.status_port),
                     "__JWKS_INLINE__": json.dumps(keyring.jwks(["rsa"]))}.items():
            text = text.replace(k, v)
        (self.dir / "api.yaml").write_text(text, encoding="utf-8")
        self.out = self.dir / "out"
        harness.gwc_build(self.dir / "api.yaml", self.out, f"127.0.0.1:{self.port}", target)
        self.nginx = Nginx(self.out).start([self.port, self.status_port])
        self.allowed: List[str] = []

    def restart(self) -> None:
        self.nginx.stop()
        self.nginx = Nginx(self.out).start([self.port, self.status_port])

    def close(self) -> List[str]:
        self.nginx.stop()
        text = log_since(self.out / "logs" / "error.log", 0)
        return [line for line in harness.severe_lines(text) if not any(a in line for a in self.allowed)]


@pytest.fixture(scope="module")
def keyring():
    return auth_tokens.KeyRing.generate()


@pytest.fixture(scope="module")
def backends():
    a, b = Backend(), Backend()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def gateway(work_dir, backends, keyring):
    rt, tried = runtime.detect(allow_docker=False)
    if rt is None:
        pytest.skip("no nginx with the Lua module: " + "; ".join(tried))
    gw = Gateway(work_dir, backends[0], backends[1], keyring, rt.target)
    yield gw
    problems = gw.close()
    if problems:
        pytest.fail("unexpected lines in the nginx error log:\n" + "\n".join(problems), pytrace=False)


def _fill(value: Any, uniq: str) -> Any:
    if isinstance(value, str):
        return value.replace("__UNIQ__", uniq)
    if isinstance(value, dict):
        return {k: _fill(v, uniq) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, uniq) for v in value]
    return value


def _request(gw: Gateway, keyring, send: dict) -> bytes:
    headers = dict(send.get("headers") or {})
    if "key" in send:
        headers["X-API-Key"] = gw.keys[send["key"]]
    if "token" in send:
        headers["Authorization"] = "Bearer " + auth_tokens.mint(send["token"], keyring)
    for k, v in (send.get("reply") or {}).items():
        headers["X-Reply-" + REPLY_HEADERS.get(k, k.capitalize())] = str(v)
    return harness.build_request({"method": send.get("method", "GET"), "path": send["path"], "headers": headers})


def _check(case: str, i: int, expect: dict, status: int, headers: dict, body: bytes, backend_count: int) -> None:
    where = f"{case} step {i}"
    assert "x-request-id" in headers, where
    if "status" in expect:
        assert status == expect["status"], f"{where}: status {status}, want {expect['status']}: {body[:300]!r}"
    if "cache" in expect:
        assert headers.get("x-cache-status") == expect["cache"], \
            f"{where}: X-Cache-Status {headers.get('x-cache-status')!r}, want {expect['cache']!r}"
    if "n" in expect:
        n = json.loads(body)["n"] if body else None
        assert n == expect["n"], f"{where}: the backend's response #{n} came back, want #{expect['n']}"
    if "calls" in expect:
        assert backend_count == expect["calls"], f"{where}: the backend saw {backend_count} requests, want {expect['calls']}"
    for k, v in (expect.get("headers") or {}).items():
        assert headers.get(k.lower()) == v, f"{where}: {k}: {headers.get(k.lower())!r}, want {v!r}"
    for k in expect.get("absent_headers") or ():
        assert k.lower() not in headers, f"{where}: {k} present: {headers.get(k.lower())!r}"
    for k, v in (expect.get("upstream_headers") or {}).items():
        seen = json.loads(body)["headers"].get(k.lower())
        assert seen == v, f"{where}: upstream {k}: {seen!r}, want {v!r}"


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_cache_case(case, gateway, backends, keyring):
    backend, flaky = backends
    uniq = uuid.uuid4().hex[:12]
    try:
        for i, step in enumerate(_fill(case["steps"], uniq), start=1):
            expect = step.get("expect") or {}
            if "sleep" in step:
                time.sleep(step["sleep"])
            if "backend" in step:
                flaky.start() if step["backend"] == "up" else flaky.stop()
            if step.get("restart"):
                gateway.restart()
            if "log" in step:
                gateway.allowed.append(step["log"])
            if "invalidate" in step:
                op = (step["invalidate"] or {}).get("operation")
                path = "/cache/invalidate" + (f"?operation={op}" if op else "")
                status, _, body = raw_request(gateway.status_port, f"POST {path} HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
                assert status == expect.get("status", 200), f"{case['name']} step {i}: invalidate {status} {body!r}"
                continue
            send = step.get("send")
            if not send:
                continue
            data = _request(gateway, keyring, send)
            times = step.get("parallel", 1)
            with ThreadPoolExecutor(max_workers=times) as ex:
                results = list(ex.map(lambda _: raw_request(gateway.port, data), range(times)))
            target = urlsplit(send["path"])
            # The backend sees the path the gateway forwards: this spec has no base path or rewrite.
            count_key = target.path + ("?" + target.query if target.query else "")
            for status, headers, body in results:
                _check(case["name"], i, expect, status, headers, body, (flaky if send["path"].startswith(("/flaky", "/nostale")) else backend).count(count_key))
    finally:
        flaky.start()


def test_access_log_records_cache_status(gateway):
    """The JSON access log's `cache` field is $upstream_cache_status (empty where the cache is not used)."""
    uniq = uuid.uuid4().hex[:12]
    ids = []
    for path in (f"/public/{uniq}", f"/public/{uniq}", f"/uncached/{uniq}"):
        status, headers, _ = raw_request(gateway.port, harness.build_request({"path": path}))
        assert status == 200
        ids.append(headers["x-request-id"])
    log = gateway.out / "logs" / "access.log"
    found: Dict[str, dict] = {}
    end = time.monotonic() + 10
    while time.monotonic() < end and len(found) < len(ids):
        for line in log.read_text(errors="replace").splitlines():
            entry = json.loads(line)
            if entry["request_id"] in ids:
                found[entry["request_id"]] = entry
        time.sleep(0.2)
    assert [found[i]["cache"] for i in ids] == ["MISS", "HIT", ""], found
