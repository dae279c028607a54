"""Response compression against a real nginx, as data (cases/compression/*.yaml).

Each case file holds the spec (a template: __BACKEND__, __BROTLI__,
__MOCK_ITEMS__), the gateway variants every case runs on, and the cases:
request in; status, Content-Encoding, Vary and the decoded body out (the file
itself documents the keys). Whatever a case expects, every response is checked
against the request's Accept-Encoding, parsed here by RFC 9110's rules: a
coding the client did not accept (absent, or q=0) is never used, and a
compressed body always decodes to exactly what the backend sent.

The backend (CompressionBackend) serves bodies of a requested size and type,
with a hash of the identity body in X-Body-Sha256, and counts the requests it
answers per path (for the cache case).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

import harness
from gwc import runtime
from gwc.compression import BROTLI_MODULE
from support.processes import Nginx, free_port, log_since, log_size, raw_request

pytestmark = pytest.mark.live

try:
    import brotli  # type: ignore
except ImportError:  # pragma: no cover - the test extra installs it
    brotli = None

CASES_DIR = Path(__file__).resolve().parent / "cases" / "compression"
MOCK_ITEMS = "gwc " * 750  # a 3000-character string: the big mock body is over min_size
EXPECT_KEYS = {"status", "encoding", "vary", "decoded", "headers", "upstream_accept_encoding", "note"}
VARIANTS = {"brotli": "auto", "gzip": "false"}
CTYPES = {
    "json": "application/json",
    "chunked": "application/json",
    "gzipped": "application/json",
    "text": "text/plain; charset=utf-8",
    "html": "text/html",
    "png": "image/png",
    "octet": "application/octet-stream",
}


# --------------------------------------------------------------------------- backend


def body_of(kind: str, size: int) -> bytes:
    """A deterministic, compressible body of exactly `size` bytes."""
    if kind in ("png", "octet"):
        head = b"\x89PNG\r\n\x1a\n" if kind == "png" else b""
        return (head + bytes(range(256)) * (size // 256 + 1))[:size]
    if size == 0:
        return b""
    if kind == "html":
        unit = b"<p>compressible html</p>"
    elif kind == "text":
        unit = b"compressible plain text "
    else:
        unit = b'{"k":"compressible json"},'
    text = (b"[" + unit * (size // len(unit) + 1))[: max(size - 1, 0)] + b"]"
    return text[:size]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        query = parse_qs(url.query)
        status = int(query.get("status", ["200"])[0])
        kind, size = (parts + ["json", "0"])[:2]
        body = body_of(kind, int(size) if size.isdigit() else 0)
        server = self.server
        with server.lock:  # type: ignore[attr-defined]
            server.hits[url.path] = server.hits.get(url.path, 0) + 1  # type: ignore[attr-defined]
            server.accept_encoding[url.path] = self.headers.get("Accept-Encoding")  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Type", CTYPES.get(kind, "application/json"))
        self.send_header("X-Body-Sha256", hashlib.sha256(body).hexdigest())
        self.send_header("X-Seen-Accept-Encoding", self.headers.get("Accept-Encoding") or "-")
        if kind == "gzipped":  # an upstream that compresses by itself, for clients that accept gzip
            self.send_header("Vary", "Accept-Encoding")
        if kind == "gzipped" and acceptable("gzip", self.headers.get("Accept-Encoding")):
            wire = gzip.compress(body, mtime=0)
            self.send_header("Content-Encoding", "gzip")
        else:
            wire = body
        if kind == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                if wire:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(wire), wire))
                self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(wire)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(wire)

    do_HEAD = do_GET

    def log_message(self, *args) -> None:
        pass


class CompressionBackend:
    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.lock = threading.Lock()  # type: ignore[attr-defined]
        self.server.hits = {}  # type: ignore[attr-defined]
        self.server.accept_encoding = {}  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.port = self.server.server_address[1]

    def hits(self, path: str) -> int:
        with self.server.lock:  # type: ignore[attr-defined]
            return self.server.hits.get(path, 0)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- RFC 9110 Accept-Encoding


def accepted_codings(value: Optional[str]) -> Dict[str, float]:
    """coding -> q from an Accept-Encoding value (RFC 9110 12.5.3); '*' kept as is. Malformed
    members are dropped (they accept nothing)."""
    out: Dict[str, float] = {}
    if value is None:
        return out
    for member in value.split(","):
        member = member.strip()
        if not member:
            continue
        name, *params = [p.strip() for p in member.split(";")]
        q = 1.0
        for p in params:
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v.strip())
                except ValueError:
                    q = 0.0
        out[name.lower()] = q
    return out


def acceptable(coding: str, value: Optional[str]) -> bool:
    """Whether a response in `coding` is acceptable to a request with this Accept-Encoding."""
    codings = accepted_codings(value)
    if coding in codings:
        return codings[coding] > 0
    return codings.get("*", 0) > 0


def decode(encoding: Optional[str], body: bytes) -> bytes:
    if encoding is None:
        return body
    if encoding == "gzip":
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "br":
        assert brotli is not None, "pip install brotli (the test extra) to decode br"
        return brotli.decompress(body)
    raise AssertionError(f"unexpected Content-Encoding {encoding!r}")


# --------------------------------------------------------------------------- cases


def _subst(value: Any, mapping: Dict[str, str]) -> Any:
    if isinstance(value, str):
        for k, v in mapping.items():
            value = value.replace(k, v)
        return value
    if isinstance(value, list):
        return [_subst(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: _subst(v, mapping) for k, v in value.items()}
    return value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    out.update(over or {})
    return out


def load_cases() -> List[Any]:
    params = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for raw in doc["cases"]:
            for variant in raw.get("variants") or doc["variants"]:
                xfail = (raw.get("xfail_by_variant") or {}).get(variant, raw.get("xfail"))
                marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
                steps = raw.get("steps") or [{"request": raw["request"], "expect": raw.get("expect") or {},
                                              "expect_by_variant": raw.get("expect_by_variant")}]
                steps = [{"request": s["request"],
                          "expect": _merge(s.get("expect") or {}, (s.get("expect_by_variant") or {}).get(variant))}
                         for s in steps]
                for s in steps:
                    unknown = set(s["expect"]) - EXPECT_KEYS
                    if unknown:
                        raise ValueError(f"{path.name}: {raw['name']}: unknown expect keys {sorted(unknown)}")
                case = {"file": path.stem, "name": raw["name"], "variant": variant, "steps": steps,
                        "backend_hits": raw.get("backend_hits") or {}}
                params.append(pytest.param(case, id=f"{path.stem}:{variant}:{harness._slug(raw['name'])}", marks=marks))
    return params


def spec_text(path: Path, backend_port: int, variant: str) -> str:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return _subst(doc["spec"], {"__BACKEND__": str(backend_port), "__BROTLI__": VARIANTS[variant],
                                "__MOCK_ITEMS__": MOCK_ITEMS})


# --------------------------------------------------------------------------- gateways


class Pool:
    """One gateway per (case file, variant), built with `gwc build` and started on first use."""

    def __init__(self, work_dir: Path, backend: CompressionBackend, target: str):
        self.work_dir = work_dir
        self.backend = backend
        self.target = target
        self.gateways: Dict[tuple, dict] = {}
        self.failures: Dict[tuple, str] = {}

    def get(self, file: str, variant: str) -> dict:
        key = (file, variant)
        if key in self.failures:
            pytest.fail(f"gateway {key} could not start: {self.failures[key]}", pytrace=False)
        if key not in self.gateways:
            try:
                self.gateways[key] = self._start(file, variant)
            except Exception as exc:
                self.failures[key] = str(exc)
                raise
        return self.gateways[key]

    def _start(self, file: str, variant: str) -> dict:
        port = free_port()
        spec = self.work_dir / "specs" / f"{file}-{variant}.yaml"
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(spec_text(CASES_DIR / f"{file}.yaml", self.backend.port, variant), encoding="utf-8")
        out = self.work_dir / "out" / f"{file}-{variant}"
        harness.gwc_build(spec, out, f"127.0.0.1:{port}", self.target)
        nginx = Nginx(out).start([port])
        return {"port": port, "out": out, "nginx": nginx, "error_log": out / "logs" / "error.log"}

    def close(self) -> List[str]:
        problems = []
        for key, gw in self.gateways.items():
            gw["nginx"].stop()
            problems += [f"{key}: {line}" for line in harness.unexpected_log_lines(log_since(gw["error_log"], 0), [])]
        return problems


@pytest.fixture(scope="module")
def pool():
    rt, tried = runtime.detect(allow_docker=False)
    if rt is None:
        pytest.skip("no nginx with the Lua module: " + "; ".join(tried))
    if not Path(BROTLI_MODULE).is_file():
        pytest.skip(f"no brotli module at {BROTLI_MODULE} (scripts/install-runtime installs it)")
    if brotli is None:
        pytest.skip("the brotli Python package (test extra) decodes br responses")
    work = Path(tempfile.mkdtemp(prefix="gwc-compression-"))
    os.chmod(work, 0o755)  # nginx workers run as nobody when the suite runs as root
    backend = CompressionBackend()
    p = Pool(work, backend, rt.target)
    yield p
    problems = p.close()
    backend.close()
    shutil.rmtree(work, ignore_errors=True)
    if problems:
        pytest.fail("unexpected lines in the nginx error logs:\n" + "\n".join(problems), pytrace=False)


# --------------------------------------------------------------------------- checks


def send(port: int, req: Dict[str, Any]):
    return raw_request(port, harness.build_request(req))


def check_response(req: Dict[str, Any], expect: Dict[str, Any], status: int, headers: Dict[str, str], body: bytes) -> List[str]:
    errs: List[str] = []
    method = req.get("method", "GET")
    sent_ae = next((v for k, v in (req.get("headers") or {}).items() if k.lower() == "accept-encoding"), None)
    encoding = headers.get("content-encoding")
    if "status" in expect and status != expect["status"]:
        errs.append(f"status: expected {expect['status']}, got {status}")
    # Invariant: never a coding the client did not accept. A pre-encoded upstream
    # response is the upstream's choice; the backend only sends one to gzip-accepting clients here.
    if encoding is not None and not acceptable(encoding, sent_ae):
        errs.append(f"Content-Encoding {encoding!r} sent to a client whose Accept-Encoding is {sent_ae!r}")
    if "encoding" in expect and encoding != expect["encoding"]:
        errs.append(f"Content-Encoding: expected {expect['encoding']!r}, got {encoding!r}")
    vary = headers.get("vary")
    if expect.get("vary") is True and (vary is None or "accept-encoding" not in vary.lower()):
        errs.append(f"Vary: expected Accept-Encoding, got {vary!r}")
    if expect.get("vary") is False and vary is not None:
        errs.append(f"Vary: expected none, got {vary!r}")
    if "upstream_accept_encoding" in expect:
        seen = headers.get("x-seen-accept-encoding")
        want_seen = expect["upstream_accept_encoding"] or "-"
        if seen != want_seen:
            errs.append(f"the backend saw Accept-Encoding {seen!r}, expected {want_seen!r}")
    for name, value in (expect.get("headers") or {}).items():
        got = headers.get(name.lower())
        if (value is None and got is not None) or (value is not None and got != str(value)):
            errs.append(f"header {name}: expected {value!r}, got {got!r}")
    decoded = None
    try:
        decoded = body if method == "HEAD" else decode(encoding, body)
    except Exception as exc:  # noqa: BLE001 - any decoder error is the finding
        errs.append(f"body does not decode as {encoding!r}: {exc!r}")
    want = expect.get("decoded")
    if decoded is not None and want is not None:
        if want == "empty" or method == "HEAD":
            if body:
                errs.append(f"expected no body, got {len(body)} bytes")
        elif want == "upstream":
            sha = headers.get("x-body-sha256")
            if sha is None:
                errs.append("expected a backend response (X-Body-Sha256)")
            elif hashlib.sha256(decoded).hexdigest() != sha:
                errs.append(f"decoded body ({len(decoded)} bytes) differs from what the backend sent")
        elif isinstance(want, dict) and "json" in want:
            try:
                if json.loads(decoded) != want["json"]:
                    errs.append(f"decoded JSON differs: {decoded[:200]!r}")
            except ValueError:
                errs.append(f"decoded body is not JSON: {decoded[:200]!r}")
    return errs


CASES = load_cases()


@pytest.mark.parametrize("case", CASES)
def test_case(case: dict, pool: Pool) -> None:
    gw = pool.get(case["file"], case["variant"])
    before = {path: pool.backend.hits(path) for path in case["backend_hits"]}
    for n, step in enumerate(case["steps"], start=1):
        req = _subst(step["request"], {"__MOCK_ITEMS__": MOCK_ITEMS, "__VARIANT__": case["variant"]})
        expect = _subst(step["expect"], {"__MOCK_ITEMS__": MOCK_ITEMS})
        offset = log_size(gw["error_log"])
        status, headers, body = send(gw["port"], req)
        errs = check_response(req, expect, status, headers, body)
        errs += [f"error log: {line}" for line in harness.unexpected_log_lines(log_since(gw["error_log"], offset), [])]
        if errs:
            raise AssertionError(f"{case['name']} [{case['variant']}] step {n}: {req}\n  " + "\n  ".join(errs)
                                 + f"\n  got: {status} {headers} {body[:120]!r}")
    for path, want in case["backend_hits"].items():
        got = pool.backend.hits(path) - before[path]
        assert got == want, f"{case['name']} [{case['variant']}]: the backend answered {path} {got} times, expected {want}"


def test_accept_encoding_parser() -> None:
    """The test's own RFC 9110 reading, which the invariant relies on."""
    assert acceptable("gzip", "gzip") and acceptable("gzip", "GZIP;Q=0.5") and acceptable("br", "*")
    assert not acceptable("gzip", None) and not acceptable("gzip", "gzip;q=0") and not acceptable("br", "br;Q=0, gzip")
    assert not acceptable("gzip", "*;q=0") and not acceptable("gzip", "identity") and not acceptable("gzip", "gzip;q=0, *")
