"""Data-driven live cases: loading, building a gateway, sending, checking.

Shared by test_cases.py (native nginx) and test_container.py (OpenResty image).

A case file (cases/*.yaml) looks like:

    spec: routing                 # or: specs: [security, security_decode]
    backends: {public: A}         # optional aliases for `backend:`
    invariant: admin_isolation    # optional check applied to every case
    cases:
      - name: concrete beats templated
        request: {method: GET, path: /api/pets/mine, headers: {X-A: b}, body: "..."}
        expect: {status: 200, backend: B, upstream_path: /pets/mine}
        expect_by_spec: {security_decode: {...}}   # merged over expect
        xfail: "reason"                            # a strict xfail: a known bug
        xfail_by_spec: {security_decode: "reason"}

`path` is sent byte for byte (UTF-8), with no client-side normalisation.
`__BACKEND_A__`, `__BACKEND_B__` and `__GATEWAY__` in requests and
expectations are replaced by the ports of this run; `__PAD_<n>__` by n
letters (over-long URIs, headers and bodies). `backend: none` means no echo
backend answered (no `X-Backend` header, no echo body). `error_log: text`
declares an `[error]` line the request is expected to log (502, 504, 413).

Checks applied to every case, whatever it expects:
- the response carries `X-Request-Id` (32 hex digits);
- a response from a backend: the `X-Request-Id` sent upstream equals the one
  returned to the client;
- a response not from a backend with status >= 400: RFC 9457 problem+json
  with `status` equal to the response status, the standard `title`, and
  `request_id` equal to the `X-Request-Id` header;
- a HEAD response has no body;
- no new `[error]`/`[crit]`/`[alert]`/`[emerg]` line in the error log unless
  the case declares it (`error_log:`), and never Lua error text.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import unquote

import pytest
import yaml

from support.processes import log_since, log_size, raw_request

LIVE_DIR = Path(__file__).resolve().parent
SPECS_DIR = LIVE_DIR / "specs"
CASES_DIR = LIVE_DIR / "cases"

# name -> (spec template, extra placeholder values)
SPEC_VARIANTS: Dict[str, Tuple[str, Dict[str, str]]] = {
    "routing": ("routing.yaml", {}),
    "lenient": ("lenient.yaml", {}),
    "greedy": ("greedy.yaml", {}),
    "security": ("security.yaml", {"__ENCODED_SLASHES__": "reject"}),
    "security_decode": ("security.yaml", {"__ENCODED_SLASHES__": "decode"}),
    "validation": ("validation.yaml", {}),
}

BACKEND_NAMES = ("A", "B")
PROBLEM_TYPE = "application/problem+json"
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
SEVERE = re.compile(r"\[(error|crit|alert|emerg)\]")
LUA_ERRORS = ("lua entry thread aborted", "runtime error", "stack traceback", "failed to run set_by_lua", "lua_error")
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")

EXPECT_KEYS = {
    "status",
    "headers",
    "headers_match",
    "backend",
    "upstream_method",
    "upstream_path",
    "upstream_headers",
    "upstream_body",
    "body",
    "body_json",
    "body_json_equals",
    "content_type",
    "problem",
    "error_log",
}
REQUEST_KEYS = {"method", "path", "headers", "body", "version", "raw_headers"}
_PAD = re.compile(r"__PAD_([0-9]{1,7})__")


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    file: str
    spec: str
    name: str
    request: Dict[str, Any]
    expect: Dict[str, Any]
    invariant: Optional[str]
    backends: Dict[str, str]
    xfail: Optional[str] = None

    def param(self):
        marks = [pytest.mark.xfail(strict=True, reason=self.xfail)] if self.xfail else []
        return pytest.param(self, id=self.id, marks=marks)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else copy.deepcopy(v)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9/._%{}+\\]+", "-", text).strip("-")[:80]


def load_cases(cases_dir: Path = CASES_DIR) -> List[Case]:
    out: List[Case] = []
    seen = set()
    for path in sorted(cases_dir.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        specs = doc.get("specs") or [doc["spec"]]
        for spec in specs:
            if spec not in SPEC_VARIANTS:
                raise ValueError(f"{path.name}: unknown spec {spec!r}")
        for raw in doc["cases"]:
            unknown = set(raw) - {"name", "request", "expect", "expect_by_spec", "xfail", "xfail_by_spec"}
            if unknown:
                raise ValueError(f"{path.name}: {raw.get('name')}: unknown keys {sorted(unknown)}")
            if set(raw["request"]) - REQUEST_KEYS:
                raise ValueError(f"{path.name}: {raw['name']}: unknown request keys {sorted(set(raw['request']) - REQUEST_KEYS)}")
            for spec in specs:
                expect = _merge(raw.get("expect") or {}, (raw.get("expect_by_spec") or {}).get(spec) or {})
                if set(expect) - EXPECT_KEYS:
                    raise ValueError(f"{path.name}: {raw['name']}: unknown expect keys {sorted(set(expect) - EXPECT_KEYS)}")
                xfail = (raw.get("xfail_by_spec") or {}).get(spec, raw.get("xfail"))
                case_id = f"{path.stem}:{spec}:{_slug(raw['name'])}" if len(specs) > 1 else f"{path.stem}:{_slug(raw['name'])}"
                if case_id in seen:
                    raise ValueError(f"duplicate case id {case_id}")
                seen.add(case_id)
                out.append(
                    Case(
                        id=case_id,
                        file=path.name,
                        spec=spec,
                        name=raw["name"],
                        request=raw["request"],
                        expect=expect,
                        invariant=doc.get("invariant"),
                        backends=dict(doc.get("backends") or {}),
                        xfail=xfail,
                    )
                )
    return out


# --------------------------------------------------------------------------- gateways


@dataclass
class Gateway:
    """One built output directory served on a loopback port."""

    spec: str
    port: int
    out_dir: Path
    placeholders: Dict[str, str]
    error_log: Path
    # [error] lines the cases that ran declared (request line, message).
    allowed_errors: List[Tuple[str, str]] = field(default_factory=list)

    def log_size(self) -> int:
        return log_size(self.error_log)

    def log_since(self, offset: int) -> str:
        return log_since(self.error_log, offset)


def render_spec(spec: str, placeholders: Dict[str, str], dest_dir: Path) -> Path:
    template, extra = SPEC_VARIANTS[spec]
    text = (SPECS_DIR / template).read_text(encoding="utf-8")
    for key, value in {**placeholders, **extra}.items():
        text = text.replace(key, value)
    leftover = re.findall(r"__[A-Z_]+__", text)
    if leftover:
        raise ValueError(f"{template}: unreplaced placeholders {sorted(set(leftover))}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"{spec}.yaml"
    out.write_text(text, encoding="utf-8")
    return out


def gwc_build(spec_file: Path, out_dir: Path, listen: str, target: str) -> None:
    """`gwc build` through its real command line; fails the session on a non-zero exit."""
    cmd = [sys.executable, "-m", "gwc.cli", "build", str(spec_file), "-o", str(out_dir), "--listen", listen, "--target", target]
    if shutil.which("gwc"):
        cmd = [shutil.which("gwc")] + cmd[3:]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")


def severe_lines(text: str) -> List[str]:
    return [line for line in text.splitlines() if SEVERE.search(line) or any(e in line for e in LUA_ERRORS)]


def unexpected_log_lines(text: str, allowed: List[Tuple[str, str]]) -> List[str]:
    """Severe or Lua-error lines of an error log that no case declared."""
    bad = []
    for line in severe_lines(text):
        if any(e in line for e in LUA_ERRORS):
            bad.append(line)  # never allowed
            continue
        if not any(msg in line and f'request: "{reqline}"' in line for reqline, msg in allowed):
            bad.append(line)
    return bad


# --------------------------------------------------------------------------- requests


def _subst(value: Any, placeholders: Dict[str, str]) -> Any:
    """Fill in ports, and expand __PAD_<n>__ to n letters (for over-long requests)."""
    if isinstance(value, str):
        for k, v in placeholders.items():
            value = value.replace(k, v)
        return _PAD.sub(lambda m: "a" * int(m.group(1)), value)
    if isinstance(value, list):
        return [_subst(v, placeholders) for v in value]
    if isinstance(value, dict):
        return {k: _subst(v, placeholders) for k, v in value.items()}
    return value


def request_target(req: Dict[str, Any]) -> str:
    return req["path"]


def build_request(req: Dict[str, Any]) -> bytes:
    method = req.get("method", "GET")
    version = req.get("version", "HTTP/1.1")
    body = req.get("body")
    body_bytes = body.encode("utf-8") if isinstance(body, str) else b""
    headers = {"Host": "gw.test"}
    headers.update(req.get("headers") or {})
    if body is not None and not any(k.lower() == "content-length" for k in headers):
        headers["Content-Length"] = str(len(body_bytes))
    headers.setdefault("Connection", "close")
    lines = [f"{method} {request_target(req)} {version}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if v is not None]
    lines += list(req.get("raw_headers") or [])  # repeated or odd header lines, as given
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body_bytes


@dataclass
class Result:
    status: int
    headers: Dict[str, str]
    body: bytes
    log: str  # error-log text written while the request ran

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def echo(self) -> Optional[dict]:
        """The echo backend's description of the request it received, if a backend answered."""
        data = self.json
        if isinstance(data, dict) and data.get("backend") in BACKEND_NAMES and "path" in data:
            # http.server decodes the request line as latin-1; undo that for UTF-8 bytes.
            try:
                data["path"] = data["path"].encode("latin-1").decode("utf-8")
            except UnicodeError:
                pass
            return data
        return None

    @property
    def backend(self) -> Optional[str]:
        return self.headers.get("x-backend")


def run_case(case: Case, gw: Gateway) -> Tuple[Result, Dict[str, Any]]:
    req = _subst(case.request, gw.placeholders)
    expect = _subst(case.expect, gw.placeholders)
    offset = gw.log_size()
    status, headers, body = raw_request(gw.port, build_request(req))
    wanted_log = expect.get("error_log")
    method = req.get("method", "GET")
    reqline = f"{method} {request_target(req)} {req.get('version', 'HTTP/1.1')}"
    if wanted_log:
        gw.allowed_errors.append((reqline, wanted_log))
        # nginx writes the line before it answers; allow a worker a moment anyway.
        end = time.monotonic() + 2
        while wanted_log not in gw.log_since(offset) and time.monotonic() < end:
            time.sleep(0.02)
    else:
        time.sleep(0.005)
    return Result(status, headers, body, gw.log_since(offset)), {**expect, "_method": method, "_reqline": reqline}


# --------------------------------------------------------------------------- checks


def _subset(expected: Any, actual: Any, where: str = "$") -> List[str]:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {actual!r}"]
        errs = []
        for k, v in expected.items():
            if k not in actual:
                errs.append(f"{where}.{k}: missing")
            else:
                errs += _subset(v, actual[k], f"{where}.{k}")
        return errs
    return [] if expected == actual else [f"{where}: expected {expected!r}, got {actual!r}"]


def _describe(result: Result) -> str:
    return f"status {result.status}, headers {result.headers}, body {result.body[:600]!r}"


def check(case: Case, result: Result, expect: Dict[str, Any]) -> None:
    errs: List[str] = []
    method = expect["_method"]
    aliases = {**{n: n for n in BACKEND_NAMES}, **case.backends}

    # --- universal checks -----------------------------------------------------------
    rid = result.headers.get("x-request-id")
    if not rid or not REQUEST_ID.match(rid):
        errs.append(f"X-Request-Id response header missing or malformed: {rid!r}")
    echo = result.echo
    if method == "HEAD" and result.body:
        errs.append(f"a HEAD response has a body: {result.body[:100]!r}")
    from_backend = result.backend is not None
    if echo is not None:
        if echo["backend"] != result.backend:
            errs.append(f"X-Backend {result.backend!r} disagrees with the echoed backend {echo['backend']!r}")
        sent_rid = echo["headers"].get("x-request-id")
        if sent_rid != rid:
            errs.append(f"X-Request-Id sent upstream {sent_rid!r} != returned to the client {rid!r}")
    if not from_backend and result.status >= 400:
        errs += _problem_errors(result, rid, method, expect.get("problem") or {})

    # --- declared expectations ------------------------------------------------------------
    if "status" in expect and result.status != expect["status"]:
        errs.append(f"status: expected {expect['status']}, got {result.status}")
    for name, value in (expect.get("headers") or {}).items():
        got = result.headers.get(name.lower())
        if value is None:
            if got is not None:
                errs.append(f"response header {name}: expected absent, got {got!r}")
        elif got != str(value):
            errs.append(f"response header {name}: expected {value!r}, got {got!r}")
    for name, pattern in (expect.get("headers_match") or {}).items():
        got = result.headers.get(name.lower())
        if got is None or not re.search(pattern, got):
            errs.append(f"response header {name}: expected to match {pattern!r}, got {got!r}")
    if "content_type" in expect and result.headers.get("content-type") != expect["content_type"]:
        errs.append(f"content-type: expected {expect['content_type']!r}, got {result.headers.get('content-type')!r}")

    if "backend" in expect:
        want = expect["backend"]
        if want in (None, "none"):
            if from_backend or echo is not None:
                errs.append(f"expected no backend to answer, but backend {result.backend!r} did (path {echo and echo['path']!r})")
        else:
            name = aliases.get(want, want)
            if result.backend != name:
                errs.append(f"backend: expected {want} ({name}), got {result.backend!r}")
            elif method != "HEAD" and echo is None:
                errs.append("backend answered but its body is not the echo JSON")
    if echo is not None or any(k in expect for k in ("upstream_path", "upstream_method", "upstream_headers", "upstream_body")):
        if echo is None and method != "HEAD":
            if any(k in expect for k in ("upstream_path", "upstream_method", "upstream_headers", "upstream_body")):
                errs.append("expected the request to reach a backend, but no echo came back")
        elif echo is not None:
            if "upstream_path" in expect and echo["path"] != expect["upstream_path"]:
                errs.append(f"upstream path: expected {expect['upstream_path']!r}, got {echo['path']!r}")
            if "upstream_method" in expect and echo["method"] != expect["upstream_method"]:
                errs.append(f"upstream method: expected {expect['upstream_method']!r}, got {echo['method']!r}")
            for name, value in (expect.get("upstream_headers") or {}).items():
                got = echo["headers"].get(name.lower())
                if value is None:
                    if got is not None:
                        errs.append(f"upstream header {name}: expected absent, got {got!r}")
                elif got != str(value):
                    errs.append(f"upstream header {name}: expected {value!r}, got {got!r}")
            if "upstream_body" in expect and echo["body"] != expect["upstream_body"]:
                errs.append(f"upstream body: expected {expect['upstream_body']!r}, got {echo['body']!r}")

    if "body" in expect and result.body.decode("utf-8", "replace") != expect["body"]:
        errs.append(f"body: expected {expect['body']!r}, got {result.body[:300]!r}")
    if "body_json" in expect:
        errs += [f"body: {e}" for e in _subset(expect["body_json"], result.json)]
    if "body_json_equals" in expect and result.json != expect["body_json_equals"]:
        errs.append(f"body: expected exactly {expect['body_json_equals']!r}, got {result.json!r}")

    # --- error log -------------------------------------------------------------------------
    wanted = expect.get("error_log")
    if wanted and wanted not in result.log:
        errs.append(f"expected {wanted!r} in the error log, got {result.log[-500:]!r}")
    allowed = [(expect["_reqline"], wanted)] if wanted else []
    for line in unexpected_log_lines(result.log, allowed):
        errs.append(f"error log: {line}")

    # --- invariants ------------------------------------------------------------------------
    if case.invariant:
        errs += INVARIANTS[case.invariant](case, result, aliases)

    if errs:
        raise AssertionError(
            f"{case.file}: {case.name} [{case.spec}]\n  request: {expect['_reqline']}\n  "
            + "\n  ".join(errs)
            + f"\n  got: {_describe(result)}"
        )


def _problem_errors(result: Result, rid: Optional[str], method: str, subset: Dict[str, Any]) -> List[str]:
    errs = []
    ctype = result.headers.get("content-type")
    if ctype != PROBLEM_TYPE:
        errs.append(f"an error from the gateway must be {PROBLEM_TYPE}, got Content-Type {ctype!r}")
        return errs
    if result.headers.get("cache-control") != "no-store":
        errs.append(f"problem responses carry Cache-Control: no-store, got {result.headers.get('cache-control')!r}")
    if method == "HEAD":
        return errs
    body = result.json
    if not isinstance(body, dict):
        return errs + [f"problem body is not a JSON object: {result.body[:200]!r}"]
    if body.get("status") != result.status:
        errs.append(f"problem status {body.get('status')!r} != response status {result.status}")
    if result.status in TITLES and body.get("title") != TITLES[result.status]:
        errs.append(f"problem title {body.get('title')!r}, expected {TITLES[result.status]!r}")
    if body.get("type") != "about:blank":
        errs.append(f"problem type {body.get('type')!r}")
    if body.get("request_id") != rid:
        errs.append(f"problem request_id {body.get('request_id')!r} != X-Request-Id {rid!r}")
    errs += [f"problem: {e}" for e in _subset(subset, body)]
    return errs


# --------------------------------------------------------------------------- invariants


def _dot_segments(path: str) -> bool:
    return any(seg in (".", "..") for seg in re.split(r"[/\\]", path))


def admin_isolation(case: Case, result: Result, aliases: Dict[str, str]) -> List[str]:
    """The admin upstream only ever sees /admin/<one segment>; the public one never an admin path.

    "Admin path" is judged the way a backend might: after one more round of
    percent-decoding, with '\\' treated like '/'.
    """
    admin, public = aliases["admin"], aliases["public"]
    echo = result.echo
    backend = result.backend
    if backend is None:
        return [] if result.status in (400, 404) else [f"not forwarded, so expected 400 or 404, got {result.status}"]
    path = (echo["path"] if echo else "").split("?", 1)[0]
    once = unquote(path)
    if backend == admin:
        if not re.match(r"^/admin/[^/]+$", path) or _dot_segments(once) or "\\" in once:
            return [f"the admin upstream received a non-canonical path {path!r}"]
        return []
    if backend == public:
        if not re.match(r"^/(public|static)/", path):
            return [f"the public upstream received {path!r}, outside its operations"]
        if _dot_segments(once) or "\\" in path:
            return [f"the public upstream received {path!r}, which a backend may resolve outside /public or /static"]
        return []
    return [f"unexpected backend {backend!r}"]


INVARIANTS = {"admin_isolation": admin_isolation}


# --------------------------------------------------------------------------- pools


class GatewayPool:
    """Builds and starts one gateway per spec variant on first use; stops them all at the end.

    `launch(out_dir, port)` starts the runtime and returns an object with
    `stop()`; `target` is passed to `gwc build --target`.
    """

    def __init__(self, work_dir: Path, backends: Dict[str, int], closed_port: int, target: str, launch, free_port):
        self.work_dir = work_dir
        self.backends = backends
        self.closed_port = closed_port
        self.target = target
        self.launch = launch
        self.free_port = free_port
        self.gateways: Dict[str, Gateway] = {}
        self.runners: List[Any] = []
        self.failures: Dict[str, str] = {}

    def get(self, spec: str) -> Gateway:
        if spec in self.failures:
            pytest.fail(f"gateway {spec!r} could not start: {self.failures[spec]}", pytrace=False)
        if spec not in self.gateways:
            try:
                self.gateways[spec] = self._start(spec)
            except Exception as exc:  # report once per spec, fail each dependent case
                self.failures[spec] = str(exc)
                raise
        return self.gateways[spec]

    def _start(self, spec: str) -> Gateway:
        placeholders = {
            "__BACKEND_A__": str(self.backends["A"]),
            "__BACKEND_B__": str(self.backends["B"]),
            "__CLOSED_PORT__": str(self.closed_port),
        }
        port = self.free_port()
        spec_file = render_spec(spec, placeholders, self.work_dir / "specs")
        out_dir = self.work_dir / "out" / spec
        gwc_build(spec_file, out_dir, f"127.0.0.1:{port}", self.target)
        runner = self.launch(out_dir, port)
        self.runners.append(runner)
        return Gateway(spec, port, out_dir, {**placeholders, "__GATEWAY__": str(port)}, out_dir / "logs" / "error.log")

    def close(self) -> List[str]:
        """Stop every runtime; return the error-log lines no case accounted for."""
        for runner in reversed(self.runners):
            runner.stop()
        problems = []
        for gw in self.gateways.values():
            for line in unexpected_log_lines(gw.log_since(0), gw.allowed_errors):
                problems.append(f"{gw.spec}: {line}")
        return problems
