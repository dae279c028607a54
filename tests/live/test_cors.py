"""CORS against a real nginx, as a case table (docs/cors.md).

Case files are cases/cors/*.yaml, in the harness's format (harness.py: request
in; status, headers, backend, problem out) plus one CORS shorthand, in the style
of the test tables of well-known CORS libraries (rs/cors, jub0bs/cors):

    spec: cors                          # specs/<spec>.yaml (SPECS)
    cases:
      - name: exact origin reflected
        request: {method: GET, path: /pets/1, headers: {Origin: https://app.example.com}}
        expect:
          status: 200
          backend: A
          cors:                         # the exact set of Access-Control-* headers
            allow_origin: https://app.example.com
            allow_credentials: "true"
            expose_headers: X-Backend
          vary: Origin                  # the Vary values, joined with ", " (null: none)

`problem_type` is the problem's `type` where it is not about:blank (429).
`cors: {}` (or `cors: none`) means no Access-Control-* header at all. Each
Access-Control-* header must appear at most once (the upstream's copies are
hidden); every harness check applies too (X-Request-Id, problem+json for the
gateway's own errors, no unexpected [error] line in the error log).

The echo backend sends its own Access-Control-Allow-Origin: * (and
-Credentials, -Expose-Headers) when the request has X-Upstream-Cors.
"""
from __future__ import annotations

import base64
import copy
import json
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import yaml

import harness
from gwc import runtime
from support.processes import Nginx, _EchoHandler, closed_port, free_port, parse_response

pytestmark = pytest.mark.live

LIVE_DIR = Path(__file__).resolve().parent
CASES_DIR = LIVE_DIR / "cases" / "cors"
SPECS = {"cors": LIVE_DIR / "specs" / "cors.yaml", "cors_aws": LIVE_DIR / "specs" / "cors_aws.yaml"}
CORS_FIELDS = {
    "allow_origin": "access-control-allow-origin",
    "allow_credentials": "access-control-allow-credentials",
    "expose_headers": "access-control-expose-headers",
    "allow_methods": "access-control-allow-methods",
    "allow_headers": "access-control-allow-headers",
    "max_age": "access-control-max-age",
    "allow_private_network": "access-control-allow-private-network",
}
CASE_KEYS = {"name", "request", "expect", "xfail"}
OWN_EXPECT = {"cors", "vary", "problem_type"}


class _UpstreamCors(_EchoHandler):
    """The echo backend, plus its own CORS headers when the request asks for them."""

    def end_headers(self) -> None:
        if self.headers.get("X-Upstream-Cors"):
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Access-Control-Allow-Credentials", "true")
            self.send_header("Access-Control-Expose-Headers", "X-Secret")
            self.send_header("Access-Control-Allow-Methods", "TRACE")
        super().end_headers()


def _backend():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _UpstreamCors)
    server.daemon_threads = True
    server.name = "A"  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _jwks() -> str:
    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    return json.dumps({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig", "n": b64(numbers.n), "e": b64(numbers.e)}]})


def load_cases() -> List[Tuple[harness.Case, Dict[str, Any]]]:
    out = []
    seen = set()
    for path in sorted(CASES_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        spec = doc["spec"]
        if spec not in SPECS:
            raise ValueError(f"{path.name}: unknown spec {spec!r}")
        for raw in doc["cases"]:
            if set(raw) - CASE_KEYS:
                raise ValueError(f"{path.name}: {raw.get('name')}: unknown keys {sorted(set(raw) - CASE_KEYS)}")
            if set(raw["request"]) - harness.REQUEST_KEYS:
                raise ValueError(f"{path.name}: {raw['name']}: unknown request keys")
            expect = dict(raw.get("expect") or {})
            own = {k: expect.pop(k) for k in list(expect) if k in OWN_EXPECT}
            if set(expect) - harness.EXPECT_KEYS:
                raise ValueError(f"{path.name}: {raw['name']}: unknown expect keys {sorted(set(expect) - harness.EXPECT_KEYS)}")
            if "cors" in own and own["cors"] not in (None, "none") and set(own["cors"]) - set(CORS_FIELDS):
                raise ValueError(f"{path.name}: {raw['name']}: unknown cors keys {sorted(set(own['cors']) - set(CORS_FIELDS))}")
            case_id = f"{path.stem}:{harness._slug(raw['name'])}"
            if case_id in seen:
                raise ValueError(f"duplicate case id {case_id}")
            seen.add(case_id)
            case = harness.Case(id=case_id, file=path.name, spec=spec, name=raw["name"], request=raw["request"],
                                expect=expect, invariant=None, backends={}, xfail=raw.get("xfail"))
            out.append((case, own))
    return out


CASES = load_cases()


@pytest.fixture(scope="module")
def cors_gateways(work_dir):
    rt, tried = runtime.detect(allow_docker=False)
    if rt is None:
        pytest.skip("no nginx with the Lua module: " + "; ".join(tried))
    backend = _backend()
    placeholders = {"__BACKEND_A__": str(backend.server_address[1]), "__CLOSED_PORT__": str(closed_port()), "__JWKS__": _jwks()}
    gateways: Dict[str, harness.Gateway] = {}
    runners = []
    try:
        for spec, template in SPECS.items():
            text = template.read_text(encoding="utf-8")
            for k, v in placeholders.items():
                text = text.replace(k, v)
            spec_file = work_dir / "specs" / f"{spec}.yaml"
            spec_file.parent.mkdir(parents=True, exist_ok=True)
            spec_file.write_text(text, encoding="utf-8")
            out_dir = work_dir / "out" / spec
            port = free_port()
            harness.gwc_build(spec_file, out_dir, f"127.0.0.1:{port}", rt.target)
            runners.append(Nginx(out_dir).start([port]))
            gateways[spec] = harness.Gateway(spec, port, out_dir, {**placeholders, "__GATEWAY__": str(port)}, out_dir / "logs" / "error.log")
        yield gateways
    finally:
        for runner in reversed(runners):
            runner.stop()
        backend.shutdown()
        backend.server_close()
    problems = [f"{gw.spec}: {line}" for gw in gateways.values()
                for line in harness.unexpected_log_lines(gw.log_since(0), gw.allowed_errors)]
    if problems:
        pytest.fail("unexpected lines in the nginx error logs:\n" + "\n".join(problems), pytrace=False)


def exchange(port: int, request: bytes, deadline_s: float = 10.0) -> Tuple[int, List[Tuple[str, str]], dict, bytes]:
    """Status, every header line (lower-cased names, in order), the harness's header dict, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=deadline_s) as s:
        s.sendall(request)
        data = b""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    lines = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in head)]
    status, headers, body = parse_response(data)
    return status, lines, headers, body


def cors_errors(own: Dict[str, Any], lines: List[Tuple[str, str]]) -> List[str]:
    errs = []
    acs = [(k, v) for k, v in lines if k.startswith("access-control-")]
    names = [k for k, _ in acs]
    for name in sorted(set(names)):
        if names.count(name) > 1:
            errs.append(f"{name} sent {names.count(name)} times: {[v for k, v in acs if k == name]}")
    if "cors" in own:
        want = own["cors"] if own["cors"] not in (None, "none") else {}
        want = {CORS_FIELDS[k]: str(v) for k, v in want.items()}
        got = dict(acs)
        if got != want:
            errs.append(f"CORS headers: expected {want}, got {got}")
    if "vary" in own:
        vary = ", ".join(v for k, v in lines if k == "vary") or None
        if vary != own["vary"]:
            errs.append(f"Vary: expected {own['vary']!r}, got {vary!r}")
    return errs


@pytest.mark.parametrize("case,own", [pytest.param(c, o, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
                                      for c, o in CASES])
def test_cors_case(case: harness.Case, own: Dict[str, Any], cors_gateways) -> None:
    gw = cors_gateways[case.spec]
    req = harness._subst(case.request, gw.placeholders)
    expect = harness._subst(case.expect, gw.placeholders)
    offset = gw.log_size()
    wanted_log = expect.get("error_log")
    method = req.get("method", "GET")
    reqline = f"{method} {harness.request_target(req)} {req.get('version', 'HTTP/1.1')}"
    status, lines, headers, body = exchange(gw.port, harness.build_request(req))
    if wanted_log:
        gw.allowed_errors.append((reqline, wanted_log))
        end = time.monotonic() + 2
        while wanted_log not in gw.log_since(offset) and time.monotonic() < end:
            time.sleep(0.02)
    result = harness.Result(status, headers, body, gw.log_since(offset))
    errs = cors_errors(own, lines)
    try:
        harness.check(case, result, {**expect, "_method": method, "_reqline": reqline})
    except AssertionError as exc:
        # The harness wants about:blank; a 429 is typed (problem_type says which).
        lines_ = [l for l in str(exc).split("\n") if l.strip() != f"problem type {own.get('problem_type')!r}"]
        if any(not l.startswith(("  request:", "  got:")) for l in lines_[1:]):
            errs.append("\n".join(lines_))
    if "problem_type" in own and (result.json or {}).get("type") != own["problem_type"]:
        errs.append(f"problem type: expected {own['problem_type']!r}, got {(result.json or {}).get('type')!r}")
    if errs:
        raise AssertionError(f"{case.file}: {case.name}\n  request: {reqline} {req.get('headers')}\n  " + "\n  ".join(errs)
                             + f"\n  got: {status} {lines}")


def test_every_spec_has_cases() -> None:
    assert {c.spec for c, _ in CASES} == set(SPECS)
