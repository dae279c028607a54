"""The auth suite's case format, gateway pool and checks.

Reuses tests/live/harness.py (request building, problem+json and error-log
checks) and adds what authentication needs: tokens minted at run time, API
keys and passwords created with the real `gwc keys` command line, TLS client
certificates, and expectations on the JSON access log (reason, consumer).

A case file (cases/*.yaml):

    spec: jwt                     # a gateway variant (see SPECS)
    cases:
      - name: valid RS256 token
        request:
          method: GET               # default GET
          path: /inline/x           # sent byte for byte; may hold __TOKEN__ / __KEY_<id>__
          headers: {X-User: admin}  # values may hold __TOKEN__ and __KEY_<id>__
          token: {alg: RS256}       # minted per run (auth_tokens.py); sent as
                                    # "Authorization: Bearer <t>" unless __TOKEN__ appears elsewhere
          basic: [user, password]   # "Authorization: Basic ..."
          forwarded_for: 10.1.2.3   # X-Forwarded-For
          tls: none | client | untrusted   # HTTPS to the TLS listener, with which client cert
        expect:
          status: 200               # or status_in: [400, 401]
          backend: A | none
          headers / headers_match / upstream_headers / upstream_path / problem   (as in harness)
          reason: jwt_expired       # the access log's `reason` for this request
          consumer: alice           # the access log's `consumer`
          upstream_lacks: [__TOKEN__]   # strings the backend must not see anywhere in the request
          error_log: text           # an [error] line this request is expected to log
        xfail: "gwc bug: ..."       # strict xfail
"""
from __future__ import annotations

import base64
import copy
import json
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import yaml

import harness  # tests/live/harness.py
from support.processes import Nginx, log_since, log_size, raw_request

AUTH_DIR = Path(__file__).resolve().parent
SPECS_DIR = AUTH_DIR / "specs"
CASES_DIR = AUTH_DIR / "cases"

CASE_KEYS = {"name", "request", "expect", "xfail"}
REQUEST_KEYS = {"method", "path", "headers", "token", "basic", "forwarded_for", "tls", "raw_headers", "body"}
EXPECT_KEYS = {
    "status", "status_in", "backend", "headers", "headers_match", "upstream_headers", "upstream_path",
    "problem", "reason", "consumer", "upstream_lacks", "error_log",
}


@dataclass(frozen=True)
class Case:
    id: str
    file: str
    spec: str
    name: str
    request: Dict[str, Any]
    expect: Dict[str, Any]
    xfail: Optional[str] = None

    def param(self):
        marks = [pytest.mark.xfail(strict=True, reason=self.xfail)] if self.xfail else []
        return pytest.param(self, id=self.id, marks=marks)


def load_cases(cases_dir: Path = CASES_DIR) -> List[Case]:
    out, seen = [], set()
    for path in sorted(cases_dir.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if "cases" not in doc or "spec" not in doc:
            continue  # not a request-case file (e.g. build_errors.yaml)
        for raw in doc["cases"]:
            bad = set(raw) - CASE_KEYS
            bad |= {f"request.{k}" for k in set(raw["request"]) - REQUEST_KEYS}
            bad |= {f"expect.{k}" for k in set(raw.get("expect") or {}) - EXPECT_KEYS}
            if bad:
                raise ValueError(f"{path.name}: {raw.get('name')}: unknown keys {sorted(bad)}")
            cid = f"{path.stem}:{harness._slug(raw['name'])}"
            if cid in seen:
                raise ValueError(f"duplicate case id {cid}")
            seen.add(cid)
            out.append(Case(cid, path.name, doc["spec"], raw["name"], raw["request"], raw.get("expect") or {}, raw.get("xfail")))
    return out


# --------------------------------------------------------------------------- gateways


@dataclass
class Gateway:
    spec: str
    port: int
    out_dir: Path
    spec_file: Path
    nginx: Nginx
    placeholders: Dict[str, str]
    tls_port: Optional[int] = None
    keys: Dict[str, str] = field(default_factory=dict)  # consumer id -> plain key
    allowed_errors: List[Tuple[str, str]] = field(default_factory=list)
    logged: Dict[str, Dict[str, str]] = field(default_factory=dict)  # request id -> expected log fields
    secrets: set = field(default_factory=set)  # tokens and keys sent; never to be logged
    background_errors: Tuple[str, ...] = ()  # [error] texts a timer of this spec logs on purpose
    error_log: Path = field(init=False)

    def __post_init__(self):
        self.error_log = self.out_dir / "logs" / "error.log"

    @property
    def access_log(self) -> Path:
        return self.out_dir / "logs" / "access.log"

    def log_size(self) -> int:
        return log_size(self.error_log)

    def log_since(self, offset: int) -> str:
        return log_since(self.error_log, offset)

    def reload(self, deadline_s: float = 10.0) -> None:
        """nginx -s reload, then wait until the old workers have gone (new ones serve)."""
        old = set(self.nginx.worker_pids())
        subprocess.run([self.nginx.binary, "-p", str(self.out_dir) + "/", "-c", "nginx.conf", "-e", "logs/error.log", "-s", "reload"],
                       check=True, capture_output=True, timeout=deadline_s)
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            now = set(self.nginx.worker_pids())
            if now and not (now & old):
                return
            time.sleep(0.05)
        raise TimeoutError(f"nginx workers did not turn over after reload (old {old}, now {self.nginx.worker_pids()})")

    def access_entries(self, request_ids, deadline_s: float = 10.0) -> Dict[str, dict]:
        """JSON access-log entries by request id; waits (with a deadline) for the buffer to flush."""
        wanted = set(request_ids)
        end = time.monotonic() + deadline_s
        found: Dict[str, dict] = {}
        while True:
            found = {}
            try:
                text = self.access_log.read_text(errors="replace")
            except OSError:
                text = ""
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("request_id") in wanted:
                    found[entry["request_id"]] = entry
            if set(found) >= wanted or time.monotonic() > end:
                return found
            time.sleep(0.1)


def gwc_cli(*args: str, stdin: Optional[str] = None, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "gwc.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=timeout)


def new_key(path: Path, consumer: str, plan: str = "free", expires: Optional[str] = None) -> str:
    """`gwc keys new`; returns the key, which it prints alone on the last line of stdout."""
    args = ["keys", "new", "--id", consumer, "--plan", plan, "--file", str(path)]
    if expires:
        args += ["--expires", expires]
    proc = gwc_cli(*args)
    if proc.returncode != 0:
        raise RuntimeError(f"gwc {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout.rstrip("\n").splitlines()[-1]


# --------------------------------------------------------------------------- requests


@dataclass
class Sent:
    result: harness.Result
    token: Optional[str]
    request_id: Optional[str]
    reqline: str


def is_background(gw: Gateway, line: str) -> bool:
    """An error a timer logged (no request), of a kind the spec provokes on purpose."""
    return ("context: ngx.timer" in line and "request:" not in line
            and not any(e in line for e in harness.LUA_ERRORS) and any(b in line for b in gw.background_errors))


def without_background(gw: Gateway, text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not is_background(gw, line))


def send(gw: Gateway, request: Dict[str, Any], mint: Callable[[dict], str], tls_contexts: Optional[Dict[str, ssl.SSLContext]] = None,
         error_log: Optional[str] = None) -> Sent:
    req = copy.deepcopy(request)
    token = mint(req.pop("token")) if req.get("token") is not None else None
    subst = dict(gw.placeholders)
    for cid, key in gw.keys.items():
        subst[f"__KEY_{cid}__"] = key
    if token is not None:
        subst["__TOKEN__"] = token
    text_before = json.dumps(req)
    req = harness._subst(req, subst)
    headers = dict(req.get("headers") or {})
    if token is not None and "__TOKEN__" not in text_before:
        headers["Authorization"] = f"Bearer {token}"
    if req.get("basic"):
        user, password = req["basic"]
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    if req.get("forwarded_for"):
        headers["X-Forwarded-For"] = req["forwarded_for"]
    req["headers"] = headers
    data = harness.build_request({k: v for k, v in req.items() if k in harness.REQUEST_KEYS})
    method = req.get("method", "GET")
    reqline = f"{method} {req['path']} HTTP/1.1"
    if error_log:
        gw.allowed_errors.append((reqline, error_log))
    offset = gw.log_size()
    if req.get("tls"):
        status, rheaders, body = raw_request(gw.tls_port, data, tls=tls_contexts[req["tls"]])
    else:
        status, rheaders, body = raw_request(gw.port, data)
    if error_log:
        end = time.monotonic() + 2
        while error_log not in gw.log_since(offset) and time.monotonic() < end:
            time.sleep(0.02)
    else:
        time.sleep(0.005)
    result = harness.Result(status, rheaders, body, without_background(gw, gw.log_since(offset)))
    if token is not None and len(token) < 16384:
        gw.secrets.add(token)
    return Sent(result, token, rheaders.get("x-request-id"), reqline)


def check(case_name: str, gw: Gateway, sent: Sent, expect: Dict[str, Any], method: str = "GET", record: bool = True) -> None:
    """harness.check's universal and declared checks, plus the auth ones."""
    subst = dict(gw.placeholders)
    for cid, key in gw.keys.items():
        subst[f"__KEY_{cid}__"] = key
    if sent.token is not None:
        subst["__TOKEN__"] = sent.token
    expect = harness._subst(copy.deepcopy(expect), subst)
    result = sent.result
    errs: List[str] = []
    hcase = harness.Case(case_name, "auth", gw.spec, case_name, {}, {}, None, {})
    hexpect = {k: v for k, v in expect.items() if k in harness.EXPECT_KEYS}
    hexpect.update(_method=method, _reqline=sent.reqline)
    try:
        harness.check(hcase, result, hexpect)
    except AssertionError as exc:
        errs.append(str(exc))
    if "status_in" in expect and result.status not in expect["status_in"]:
        errs.append(f"status: expected one of {expect['status_in']}, got {result.status}")
    # Never a server error from an authentication decision, unless the case says so.
    if result.status >= 500 and expect.get("status", 0) < 500 and not any(s >= 500 for s in expect.get("status_in", [])):
        errs.append(f"unexpected server error {result.status}")
    echo = result.echo
    # No secret material in what the gateway itself answers.
    if echo is None:
        answer = result.body.decode("utf-8", "replace") + json.dumps(result.headers)
        for secret in [sent.token or ""] + list(gw.keys.values()):
            if secret and secret in answer:
                errs.append(f"the gateway's response contains a credential ({secret[:12]}...)")
    for needle in expect.get("upstream_lacks") or []:
        if echo is not None and needle and needle in json.dumps(echo):
            errs.append(f"the backend saw {needle[:40]!r}... which must have been removed")
    if record and (expect.get("reason") is not None or expect.get("consumer") is not None) and sent.request_id:
        gw.logged[sent.request_id] = {k: expect[k] for k in ("reason", "consumer") if expect.get(k) is not None}
        gw.logged[sent.request_id]["_case"] = case_name
    if errs:
        raise AssertionError("\n".join(errs))
