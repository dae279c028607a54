"""CORS in a real browser (issue 10): headless chromium, driven by Playwright,
calls the gateway with fetch() from a page on another loopback origin.

One browser for the session, one gateway (real nginx built from SPEC with
`gwc build`, an echo backend behind it) for the module. The cases are data
(cases.yaml): fetch options in; out, what the page could see: resolved with a
status, readable headers and a body, or rejected with the browser's TypeError;
and how many requests of each method reached the gateway, from its JSON access
log (one worker, so the log is in request order).

The page shows every case and its verdict; a screenshot of it is kept in
tests/artifacts/cors-browser.png (git-ignored; $GWC_ARTIFACTS_DIR moves it).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from browser_support import page_server
from gwc import runtime
from live.harness import _subset, gwc_build, unexpected_log_lines
from support.processes import Nginx, echo_backend, free_port

pytestmark = [pytest.mark.live, pytest.mark.browser]

CASES_FILE = Path(__file__).resolve().parent / "cases.yaml"
ISSUER = "https://issuer.test/"
AUDIENCE = "gwc-browser"
LOG_DEADLINE_S = 5.0

# The pages' origins. `app` and the wildcard `http://*.apps.gwc.test:<app port>`
# are listed; the others are not. *.gwc.test and *.evil.test resolve to loopback
# in the browser (conftest.HOST_RULES); the app's page server answers every name.
PAGE_HOSTS = {
    "app": "127.0.0.1",
    "sub": "one.apps.gwc.test",
    "deep": "a.b.apps.gwc.test",
    "apex": "apps.gwc.test",
    "lookalike": "evil-apps.gwc.test",
    "suffix_lookalike": "apps.gwc.test.evil.test",
}

SPEC = """\
openapi: 3.1.0
info: {{title: gwc real-browser CORS suite, version: "1.0"}}
x-gateway:
  upstreams:
    echo: {{servers: ["http://127.0.0.1:{backend}"]}}
    down: {{servers: ["http://127.0.0.1:{closed}"], timeout: {{connect: 1s}}, retries: {{count: 0}}}}
  upstream: echo
  nginx: {{worker_processes: 1}}   # one access-log buffer: entries in request order
  cors:                           # `headers` left to its default: what the spec implies
    origins: ["{app_origin}", "http://*.apps.gwc.test:{app_port}"]
    expose: [X-Backend]
    credentials: true
    max_age: 600
security: []
components:
  securitySchemes:
    user:
      type: http
      scheme: bearer
      bearerFormat: JWT
      x-gateway: {{issuer: "{issuer}", audiences: [{audience}], algorithms: [RS256], jwks: {jwks}}}
  parameters:
    id: {{name: id, in: path, required: true, schema: {{type: string}}}}
    trace: {{name: X-Trace, in: header, required: false, schema: {{type: string}}}}
  responses:
    ok: {{description: OK}}
paths:
  /items/{{id}}:
    parameters: [{{$ref: "#/components/parameters/id"}}, {{$ref: "#/components/parameters/trace"}}]
    get: {{operationId: getItem, responses: {{"200": {{$ref: "#/components/responses/ok"}}}}}}
    put: {{operationId: putItem, responses: {{"200": {{$ref: "#/components/responses/ok"}}}}}}
  /open/{{id}}:
    parameters: [{{$ref: "#/components/parameters/id"}}, {{$ref: "#/components/parameters/trace"}}]
    x-gateway:
      cors: {{credentials: false, headers: [Content-Type], expose: []}}
    get: {{operationId: getOpen, responses: {{"200": {{$ref: "#/components/responses/ok"}}}}}}
    put: {{operationId: putOpen, responses: {{"200": {{$ref: "#/components/responses/ok"}}}}}}
  /fresh/{{id}}:
    parameters: [{{$ref: "#/components/parameters/id"}}, {{$ref: "#/components/parameters/trace"}}]
    x-gateway: {{cors: {{max_age: 0}}}}
    put: {{operationId: putFresh, responses: {{"200": {{$ref: "#/components/responses/ok"}}}}}}
  /off:
    x-gateway: {{cors: false}}
    get: {{operationId: getOff, responses: {{"200": {{$ref: "#/components/responses/ok"}}}}}}
  /private:
    get:
      operationId: getPrivate
      security: [{{user: []}}]
      responses: {{"200": {{$ref: "#/components/responses/ok"}}}}
  /limited:
    get:
      operationId: getLimited
      x-gateway: {{rate_limit: {{name: browser, rate: 1/min, burst: 0, key: global}}}}
      responses: {{"200": {{$ref: "#/components/responses/ok"}}}}
  /small/{{id}}:
    parameters: [{{$ref: "#/components/parameters/id"}}]
    put:
      operationId: putSmall
      x-gateway: {{max_body_size: 1k}}
      responses: {{"200": {{$ref: "#/components/responses/ok"}}}}
  /down:
    get:
      operationId: getDown
      x-gateway: {{upstream: down}}
      responses: {{"200": {{$ref: "#/components/responses/ok"}}}}
"""
# [error] lines the cases cause on purpose: (request line, message).
EXPECTED_ERRORS = [("GET /down HTTP/1.1", "connect() failed"),
                   ("PUT /small/big HTTP/1.1", "client intended to send too large body")]

CASE_KEYS = {"name", "page", "path", "init", "repeat", "expect"}
EXPECT_KEYS = {"outcome", "error", "status", "type", "headers", "body_json", "log"}


@dataclass(frozen=True)
class Case:
    name: str
    page: str
    path: str
    init: Dict[str, Any]
    repeat: int
    expect: Dict[str, Any]


def load_cases() -> List[Case]:
    doc = yaml.safe_load(CASES_FILE.read_text(encoding="utf-8"))
    out = []
    for raw in doc["cases"]:
        if set(raw) - CASE_KEYS or set(raw.get("expect") or {}) - EXPECT_KEYS:
            raise ValueError(f"{CASES_FILE.name}: {raw.get('name')}: unknown keys "
                             f"{sorted((set(raw) - CASE_KEYS) | (set(raw.get('expect') or {}) - EXPECT_KEYS))}")
        if raw["page"] not in (*PAGE_HOSTS, "stranger"):
            raise ValueError(f"{CASES_FILE.name}: {raw['name']}: page must be one of {sorted((*PAGE_HOSTS, 'stranger'))}")
        out.append(Case(raw["name"], raw["page"], raw["path"], raw.get("init") or {}, int(raw.get("repeat", 1)),
                        raw["expect"]))
    return out


CASES = load_cases()


# --------------------------------------------------------------------------- the gateway


def _keypair():
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="browser", alg="RS256", use="sig")
    return key, {"keys": [jwk]}


def _token(key) -> str:
    import jwt

    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "browser-user", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "browser"})


@dataclass
class Gateway:
    origin: str
    nginx: Nginx
    out_dir: Path
    token: str

    @property
    def access_log(self) -> Path:
        return self.out_dir / "logs" / "access.log"

    @property
    def error_log(self) -> Path:
        return self.out_dir / "logs" / "error.log"

    def _counts(self, path: str) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        try:
            text = self.access_log.read_text(errors="replace")
        except OSError:
            return counts
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("path") == path:
                counts[entry.get("method")] = counts.get(entry.get("method"), 0) + 1
        return counts

    def log_counts(self, path: str, at_least: int) -> Dict[str, int]:
        """Requests per method for `path` in the access log, once it holds `at_least` of them (or at the deadline).

        The log is buffered (flush=1s); SIGUSR1 (reopen) makes the worker write its buffer now."""
        end = time.monotonic() + LOG_DEADLINE_S
        os.kill(self.nginx.proc.pid, signal.SIGUSR1)
        while True:
            counts = self._counts(path)
            if sum(counts.values()) >= at_least or time.monotonic() > end:
                return counts
            time.sleep(0.05)


@pytest.fixture(scope="module")
def origins():
    with page_server() as app, page_server() as stranger:
        out = {name: f"http://{host}:{app}" for name, host in PAGE_HOSTS.items()}
        out["stranger"] = f"http://127.0.0.1:{stranger}"
        yield out


@pytest.fixture(scope="module")
def gateway(origins, artifacts_dir):
    """The gateway, built from SPEC; its spec and logs are kept next to the screenshot."""
    rt, tried = runtime.detect(allow_docker=False)
    if rt is None:
        pytest.skip("no nginx with the Lua module: " + "; ".join(tried))
    # World-readable: as root, nginx workers run as nobody and read DIR/lua.
    work = Path(tempfile.mkdtemp(prefix="gwc-browser-"))
    os.chmod(work, 0o755)
    key, jwks = _keypair()
    try:
        with echo_backend("A") as backend:
            port = free_port()
            spec = work / "browser.yaml"
            spec.write_text(SPEC.format(backend=backend, closed=free_port(), app_origin=origins["app"],
                                        app_port=origins["app"].rsplit(":", 1)[1], issuer=ISSUER, audience=AUDIENCE,
                                        jwks=json.dumps(jwks)), encoding="utf-8")
            out = work / "out"
            gwc_build(spec, out, f"127.0.0.1:{port}", rt.target)
            try:
                with Nginx(out).start([port]) as nginx:
                    yield Gateway(f"http://127.0.0.1:{port}", nginx, out, _token(key))
            finally:  # nginx has stopped: its buffered access log is written
                shutil.copy(spec, artifacts_dir / "cors-browser-spec.yaml")
                for name in ("access.log", "error.log"):
                    if (out / "logs" / name).exists():
                        shutil.copy(out / "logs" / name, artifacts_dir / f"cors-browser-{name}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def pages(browser, origins, gateway, artifacts_dir):
    """One browser context (one cookie jar), a page on each origin. The app page shows every case."""
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    # Cookies ignore ports: this one goes to the gateway's origin, from a page that is same-site with it.
    context.add_cookies([{"name": "gwc_session", "value": "browser-suite", "url": gateway.origin}])
    opened = {}

    def page(name: str):
        if name not in opened:
            p = context.new_page()
            p.set_default_timeout(15_000)
            p.goto(origins[name] + "/index.html", wait_until="load")
            opened[name] = p
        return opened[name]

    try:
        page("app")
        yield page
    finally:
        if "app" in opened:
            opened["app"].screenshot(path=str(artifacts_dir / "cors-browser.png"), full_page=True)
        context.close()


# --------------------------------------------------------------------------- checks


def _fill(value: Any, fills: Dict[str, str]) -> Any:
    """__TOKEN__: a valid JWT; __APP_PORT__: the app page's port; __PAD_<n>__: n letters (an over-long body)."""
    if isinstance(value, str):
        for k, v in fills.items():
            value = value.replace(k, v)
        return re.sub(r"__PAD_([0-9]{1,7})__", lambda m: "a" * int(m.group(1)), value)
    if isinstance(value, dict):
        return {k: _fill(v, fills) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, fills) for v in value]
    return value


def _verdict(case: Case, seen: Dict[str, Any], counts: Dict[str, int], fills: Dict[str, str]) -> List[str]:
    want = _fill(case.expect, fills)
    errs = []
    if seen.get("outcome") != want["outcome"]:
        errs.append(f"fetch {seen.get('outcome')}, expected {want['outcome']}")
    if "error" in want and seen.get("error") != want["error"]:
        errs.append(f"error {seen.get('error')!r}, expected {want['error']!r}")
    if "status" in want and seen.get("status") != want["status"]:
        errs.append(f"status {seen.get('status')!r}, expected {want['status']}")
    if "type" in want and seen.get("type") != want["type"]:
        errs.append(f"Response.type {seen.get('type')!r}, expected {want['type']!r}")
    for name, value in (want.get("headers") or {}).items():
        got = (seen.get("headers") or {}).get(name.lower())
        if got != value:
            errs.append(f"r.headers.get({name!r}) = {got!r}, expected {value!r}")
    if "body_json" in want:
        try:
            body = json.loads(seen.get("body") or "")
        except ValueError:
            body = None
        errs += [f"body: {e}" for e in _subset(want["body_json"], body)]
    for method, n in (want.get("log") or {}).items():
        if counts.get(method, 0) != n:
            errs.append(f"{method} requests at the gateway: {counts.get(method, 0)}, expected {n}")
    return errs


def _describe_request(case: Case) -> str:
    init = case.init
    parts = [init.get("method", "GET"), case.path]
    headers = {k: ("Bearer …" if k == "Authorization" and "__TOKEN__" in v else v)
               for k, v in (init.get("headers") or {}).items()}
    if headers:
        parts.append(json.dumps(headers, ensure_ascii=False))
    if init.get("credentials"):
        parts.append(f"credentials: {init['credentials']}")
    if case.repeat > 1:
        parts.append(f"×{case.repeat}")
    return " ".join(parts)


def _describe_seen(seen: Dict[str, Any], counts: Dict[str, int]) -> str:
    if seen.get("outcome") == "resolved":
        text = f"{seen['status']} {json.dumps(seen.get('headers') or {})} {(seen.get('body') or '')[:160]}"
    else:
        text = f"rejected: {seen.get('error')}: {seen.get('message')}"
    if counts:
        text += f"  [at the gateway: {json.dumps(counts, sort_keys=True)}]"
    return text


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_browser_cors(case: Case, pages, origins, gateway):
    fills = {"__TOKEN__": gateway.token, "__APP_PORT__": origins["app"].rsplit(":", 1)[1]}
    request = {
        "url": gateway.origin + case.path,
        "init": _fill(case.init, fills),
        "repeat": case.repeat,
        "read": list((case.expect.get("headers") or {}).keys()),
        "timeout_ms": 10_000,
    }
    seen = pages(case.page).evaluate("c => gwcFetch(c)", request)
    want_log = case.expect.get("log") or {}
    counts = gateway.log_counts(case.path, sum(want_log.values())) if want_log else {}
    errs = _verdict(case, seen, counts, fills)
    pages("app").evaluate("a => gwcShow(...a)", [case.name, origins[case.page], _describe_request(case),
                                                 _describe_seen(seen, counts), not errs])
    assert not errs, f"{case.name}:\n  " + "\n  ".join(errs) + f"\n  the page saw: {json.dumps(seen)[:800]}"


def test_zz_gateway_error_log_clean(pages, gateway):
    """After the cases: no [error]-or-worse line and no Lua error in the gateway's error log."""
    text = gateway.error_log.read_text(errors="replace") if gateway.error_log.exists() else ""
    bad = unexpected_log_lines(text, EXPECTED_ERRORS)
    assert not bad, "unexpected lines in the gateway's error log:\n" + "\n".join(bad)
