"""Loopback HTTP servers the gateway talks to: a JWKS/OIDC issuer and an external authorizer.

Both count the requests they receive, so tests can assert on fetches and
calls server-side (never on timing).
"""
from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterator, List


class JwksState:
    """What the issuer serves. `sets[name]` is the JWKS at /<name>/jwks.json;
    /<name>/.well-known/openid-configuration names issuer and that JWKS."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sets: Dict[str, dict] = {}
        self.issuers: Dict[str, str] = {}
        self.hits: Counter = Counter()
        self.port = 0

    def set(self, name: str, jwks: dict, issuer: str = "") -> None:
        with self.lock:
            self.sets[name] = jwks
            if issuer:
                self.issuers[name] = issuer

    def count(self, path: str) -> int:
        with self.lock:
            return self.hits[path]


class _JwksHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        state: JwksState = self.server.state  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        with state.lock:
            state.hits[path] += 1
            parts = path.strip("/").split("/", 1)
            name = parts[0]
            body = None
            if name in state.sets and len(parts) == 2:
                if parts[1] == "jwks.json":
                    body = state.sets[name]
                elif parts[1] == ".well-known/openid-configuration":
                    body = {
                        "issuer": state.issuers.get(name, ""),
                        "jwks_uri": f"http://127.0.0.1:{state.port}/{name}/jwks.json",
                        "authorization_endpoint": f"http://127.0.0.1:{state.port}/{name}/authorize",
                        "id_token_signing_alg_values_supported": ["RS256"],
                    }
        payload = json.dumps(body).encode() if body is not None else b'{"error":"not found"}'
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


class AuthorizerState:
    """Decides by the Authorization header sent to it:

    - "Bearer allow-<anything>": 200 with X-Auth-User: <anything>, X-Auth-Plan: gold
      and an X-Not-Forwarded header that the spec does not forward
    - "Bearer deny401-..." / "Bearer deny403-...": that status
    - "Bearer slow-...": sleeps `slow_s` then allows
    - "Bearer boom-...": 500
    Every call is recorded (identity headers as received)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls: List[dict] = []
        self.slow_s = 3.0

    def count(self, token_prefix: str = "") -> int:
        with self.lock:
            return sum(1 for c in self.calls if (c.get("authorization") or "").startswith("Bearer " + token_prefix)
                       or (not token_prefix))


class _AuthorizerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        state: AuthorizerState = self.server.state  # type: ignore[attr-defined]
        headers = {k.lower(): v for k, v in self.headers.items()}
        with state.lock:
            state.calls.append({**headers, "_path": self.path})
        auth = headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        extra = {}
        if token.startswith("allow-"):
            status = 200
            extra = {"X-Auth-User": token[6:], "X-Auth-Plan": "gold", "X-Not-Forwarded": "secret"}
        elif token.startswith("deny401-"):
            status = 401
        elif token.startswith("deny403-"):
            status = 403
        elif token.startswith("slow-"):
            time.sleep(state.slow_s)
            status = 200
        elif token.startswith("boom-"):
            status = 500
        elif headers.get("x-gwc-query-token", "").startswith("allow-"):
            status = 200
            extra = {"X-Auth-User": "query-" + headers["x-gwc-query-token"][6:]}
        else:
            status = 401
        payload = b"{}"
        self.send_response(status)
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except OSError:
            pass

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _serve(handler, state) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def jwks_server() -> Iterator[JwksState]:
    state = JwksState()
    with _serve(_JwksHandler, state) as server:
        state.port = server.server_address[1]
        yield state


@contextlib.contextmanager
def authorizer_server() -> Iterator[tuple]:
    state = AuthorizerState()
    with _serve(_AuthorizerHandler, state) as server:
        yield state, server.server_address[1]
