"""The WAF live: Debian's ModSecurity module and CRS in real nginx, against a
counting backend, with the cases of tests/waf/cases/*.yaml as data.

Each case runs on the operations of one or more modes (SPEC): `block` (the
root's WAF), `detect`, `open` (`waf: false`), `excl` (with exclusions),
`small` (inspect.max_body 1k). For every response the test checks the
status, that a refused request never reached the backend and is a
WAF_FILTERED problem, and, for detect runs, that the WAF record of the request
names the expected rule ids. At the end no log file may hold any case's payload.
Skipped, with the reason, where nginx or the ModSecurity module or CRS is absent.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from gwc import waf as waf_model
from support.processes import Nginx, free_port, have_nginx, raw_request

pytestmark = pytest.mark.live

CASES_DIR = Path(__file__).resolve().parent / "cases"
HOST = "api.example.test"  # a name: the CRS scores a numeric Host header
USER_AGENT = "gwc-waf-tests/1.0"
ACCEPT = "application/json"

MODE_WAF = {
    "block": None,  # the root's
    "detect": {"mode": "detect"},
    "open": False,
    "excl": {"exclusions": [
        {"rule": 942100, "target": "ARGS:json.description"},
        {"rules": ["941000-941999"], "target": "ARGS:json.html"},
        {"rule": 933210, "target": "ARGS:json.notes"},
    ]},
    "small": {"inspect": {"max_body": "1k"}},
    "partial": {"inspect": {"max_body": "1k", "oversize": "pass"}},
    # No CRS: outside the location that holds it, only its own rules file applies.
    "own": {"rules": "none", "rules_files": ["own.conf"]},
}
OWN_RULES = 'SecRule REQUEST_HEADERS:X-Probe "@streq 1" "id:10001,phase:1,deny,status:403,nolog,msg:\'probe\'"\n'


def _missing_runtime() -> str:
    if not have_nginx():
        return "no nginx with the Lua module; run scripts/install-runtime"
    if not Path(waf_model.MODSECURITY_MODULE).is_file():
        return f"ModSecurity module {waf_model.MODSECURITY_MODULE} is not installed; run scripts/install-runtime"
    if not Path(waf_model.CRS_RULES_DIR).is_dir():
        return f"the OWASP CRS ({waf_model.CRS_RULES_DIR}) is not installed; run scripts/install-runtime"
    return ""


def spec(backend_port: int, dead_port: int) -> dict:
    json_body = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    paths: Dict[str, dict] = {}
    for mode, waf in MODE_WAF.items():
        gw = {} if waf is None else {"waf": waf}
        query = [{"name": n, "in": "query", "schema": {"type": "string"}} for n in ("q", "lang", "page", "file", "cmd")]
        ok = {"200": {"description": "ok"}}
        paths[f"/{mode}/search"] = {"x-gateway": gw, "get": {"operationId": f"{mode}Search", "parameters": query, "responses": ok}}
        paths[f"/{mode}/items"] = {"x-gateway": gw, "post": {"operationId": f"{mode}Create", "requestBody": json_body, "responses": ok}}
        paths[f"/{mode}/items/{{id}}"] = {
            "x-gateway": gw,
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "put": {"operationId": f"{mode}Replace", "requestBody": json_body, "responses": ok},
            "patch": {"operationId": f"{mode}Update", "requestBody": {"content": {"application/merge-patch+json": {"schema": {"type": "object"}}}}, "responses": ok},
            "delete": {"operationId": f"{mode}Delete", "responses": ok},
        }
        paths[f"/{mode}/form"] = {"x-gateway": gw, "post": {
            "operationId": f"{mode}Form",
            "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}},
            "responses": ok}}
    # Order: the IP policy before the WAF, the WAF before authentication.
    attackable = {"get": {"parameters": [{"name": "q", "in": "query", "schema": {"type": "string"}}],
                          "responses": {"200": {"description": "ok"}}}}
    paths["/ipdeny/search"] = {"x-gateway": {"ip": {"deny": ["127.0.0.0/8"]}},
                               "get": {**attackable["get"], "operationId": "ipdenySearch"}}
    paths["/auth/search"] = {"get": {**attackable["get"], "operationId": "authSearch", "security": [{"basic": []}]}}
    # A backend nobody listens on: where its connect error is logged (docs/waf.md, "Logs").
    for mode, waf in (("block", None), ("detect", {"mode": "detect"})):
        gw = {"upstream": "dead", **({} if waf is None else {"waf": waf})}
        paths[f"/dead{mode}/search"] = {"x-gateway": gw, "get": {**attackable["get"], "operationId": f"dead{mode}Search"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "WAF live", "version": "1"},
        "security": [],
        "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic", "x-gateway": {"credentials": "users.yaml"}}}},
        "x-gateway": {
            "upstreams": {"app": {"servers": [f"http://127.0.0.1:{backend_port}"]},
                          "dead": {"servers": [f"http://127.0.0.1:{dead_port}"]}},
            "upstream": "app",
            # Validation would refuse some attacks first; the WAF is what is under test.
            "validate": {"parameters": False, "body": False},
            "waf": {"paranoia": 1},
        },
        "paths": paths,
    }


class _Counting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.seen.append(self.headers.get("X-Case", ""))  # type: ignore[attr-defined]
        body = b'{"ok": true}'
        self.send_response(int(self.headers.get("X-Backend-Status") or 200))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", "app")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    why = _missing_runtime()
    if why:
        print(f"SKIP tests/waf live: {why}")
        pytest.skip(why)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    server.seen = []  # type: ignore[attr-defined]
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    work = tmp_path_factory.mktemp("waf")
    spec_file = work / "api.yaml"
    # One user whose password nobody sends: the auth operation only has to refuse.
    (work / "users.yaml").write_text("users: [{username: nobody, password_hash: 'pbkdf2-sha256$1000$c2FsdHNhbHQ$"
                                     + "A" * 43 + "'}]\n", encoding="utf-8")
    (work / "own.conf").write_text(OWN_RULES, encoding="utf-8")
    spec_file.write_text(yaml.safe_dump(spec(server.server_address[1], free_port()), sort_keys=False), encoding="utf-8")
    out = work / "out"
    port = free_port()
    cmd = [sys.executable, "-m", "gwc.cli", "build", str(spec_file), "-o", str(out), "--listen", f"127.0.0.1:{port}",
           "--install-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    nginx = Nginx(out).start([port])
    try:
        yield {"port": port, "out": out, "seen": server.seen, "nginx": nginx}
    finally:
        nginx.stop()
        server.shutdown()
        server.server_close()


def _load() -> List[pytest.param]:
    out = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for test in doc["tests"]:
            for mode in test.get("modes", doc.get("modes", ["block"])):
                out.append(pytest.param(test, mode, id=f"{path.stem}:{test['test_id']}:{mode}"))
    return out


def _pad(text: str) -> str:
    return re.sub(r"__PAD_(\d+)__", lambda m: "p" * int(m.group(1)), text)


def _request(stage_input: dict, mode: str, case_id: str) -> bytes:
    method = stage_input.get("method", "GET")
    uri = stage_input["uri"].replace("{mode}", mode)
    data = _pad(stage_input.get("data", "")).encode("utf-8")
    headers = {"Host": HOST, "User-Agent": USER_AGENT, "Accept": ACCEPT, "X-Case": case_id}
    headers.update(stage_input.get("headers") or {})
    if data and "Content-Length" not in headers and "Transfer-Encoding" not in headers:
        headers["Content-Length"] = str(len(data))
    headers["Connection"] = "close"
    head = f"{method} {uri} {stage_input.get('version', 'HTTP/1.1')}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("utf-8") + b"\r\n" + data


# Request ids of the detect runs and the rule ids their WAF record must name,
# and the payloads no log may hold; checked once every case has run.
_RECORDS: List[tuple] = []
_PAYLOADS: List[str] = []


@pytest.mark.parametrize("test,mode", _load())
def test_case(gateway, test, mode):
    for n, stage in enumerate(test["stages"]):
        case_id = f"{test['test_id']}-{mode}-{n}"
        status, headers, body = raw_request(gateway["port"], _request(stage["input"], mode, case_id))
        expected = stage["output"]["status"]
        expected = expected[mode] if isinstance(expected, dict) else expected
        assert status == expected, f"{test['desc']} ({mode}): {status} {body[:300]!r}"
        reached = case_id in gateway["seen"]
        if stage["output"].get("backend"):
            assert headers.get("x-backend") == "app" and reached and body == b'{"ok": true}', body[:200]
        elif status == 200:
            assert headers.get("x-backend") == "app" and reached
        else:
            assert not reached, "a refused request reached the backend"
            problem = json.loads(body)
            assert headers["content-type"] == "application/problem+json"
            assert problem["status"] == status
            if status == 403:
                assert problem["type"] == stage["output"].get("problem_type", "https://gwc.dev/problems/waf-filtered")
                assert problem["title"] == "Forbidden"
                assert problem["request_id"] == headers["x-request-id"]
        ids = (stage["output"].get("log") or {}).get("expect_ids")
        if mode in ("block", "detect") and ids:
            _RECORDS.append((headers["x-request-id"], ids, f"{test['test_id']}:{mode}", status))
    if test.get("payload"):
        _PAYLOADS.append(test["payload"])


def test_rules_none_runs_only_its_own_rules(gateway):
    """An operation with rules: none sits outside the location that holds the CRS: an attack
    the CRS refuses elsewhere passes, and its own rules file still refuses (WAF_FILTERED)."""
    attack = {"uri": "/{mode}/search?q=abc%27%20or%20%27x%27%3D%27x"}
    status, _, _ = raw_request(gateway["port"], _request(attack, "block", "own-crs-block"))
    assert status == 403
    status, headers, _ = raw_request(gateway["port"], _request(attack, "own", "own-crs"))
    assert status == 200 and headers.get("x-backend") == "app" and "own-crs" in gateway["seen"]
    probe = {"uri": "/{mode}/search?q=shoes", "headers": {"X-Probe": "1"}}
    status, headers, body = raw_request(gateway["port"], _request(probe, "own", "own-probe"))
    assert status == 403 and "own-probe" not in gateway["seen"], body[:200]
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["type"] == "https://gwc.dev/problems/waf-filtered"


def test_upstream_errors_reach_the_error_log_in_every_waf_location(gateway):
    """A detect location logs [notice] and worse (ModSecurity never refuses there and its rule
    messages are [info]). A block location logs only [crit], so that ModSecurity's refusal line
    (which nginx ends with the request line) is never written, and calls its upstream from a
    named location at the server's level: its connect error is in the error log too, while a
    refused attack on the same operation leaves no line and no payload there."""
    attack = "/deadblock/search?q=abc%27%20or%20%27x%27%3D%27x"
    status, _, body = raw_request(gateway["port"], _request({"uri": attack}, "block", "dead-attack"))
    assert status == 403 and json.loads(body)["type"] == "https://gwc.dev/problems/waf-filtered"
    assert "dead-attack" not in gateway["seen"]
    for mode in ("detect", "block"):
        status, headers, body = raw_request(gateway["port"], _request(
            {"uri": f"/dead{mode}/search?q=dead-{mode}"}, mode, f"dead-{mode}"))
        assert status == 502, body[:200]
        problem = json.loads(body)
        assert problem["status"] == 502 and problem["request_id"] == headers["x-request-id"]
    errors = _wait_for(gateway["nginx"].error_log, ["q=dead-detect", "q=dead-block"])
    lines = [line for line in errors.splitlines() if "while connecting to upstream" in line]
    assert any("/deaddetect/search?q=dead-detect" in line for line in lines), errors[-2000:]
    assert any("/deadblock/search?q=dead-block" in line for line in lines), errors[-2000:]
    assert "or 'x'='x" not in errors and "%27x%27%3D%27x" not in errors and "ModSecurity: " not in errors
    access = _wait_for(gateway["out"] / "logs" / "access.log", ['"/deadblock/search"'])
    entry = [json.loads(l) for l in access.splitlines() if '"/deadblock/search"' in l][-1]
    assert entry["status"] == 502 and entry["upstream_status"] == "502" and entry["upstream_addr"], entry


def _audit_records(text: str) -> Dict[str, str]:
    """Native audit log: request id (part A) -> the record's text."""
    out = {}
    for record in re.split(r"\n(?=---[A-Za-z0-9]{8}---A--\n)", text):
        m = re.search(r"---A--\n\[[^\]]+\] (\S+) ", record)
        if m:
            out[m.group(1)] = record
    return out


def test_records_name_the_rules_and_score(gateway):
    """Runs after the cases (file order): each flagged request, refused or let through,
    left a WAF record with its rule ids and the score; the access log gives the refused
    ones reason waf_filtered."""
    if not _RECORDS:
        pytest.skip("no block or detect case ran")
    records = _audit_records(_wait_for(gateway["out"] / "logs" / "waf.log", [r[0] for r in _RECORDS]))
    access = _wait_for(gateway["out"] / "logs" / "access.log", [r[0] for r in _RECORDS])
    reasons = {e["request_id"]: e["reason"] for e in map(json.loads, access.splitlines())}
    for rid, ids, name, status in _RECORDS:
        assert reasons[rid] == ("waf_filtered" if status == 403 else ""), name
        record = records.get(rid)
        assert record is not None, f"{name}: no WAF record for request {rid}"
        summary = re.search(r"inbound anomaly score (\d+) \(threshold 5\), rules([0-9 ]*)", record)
        assert summary, f"{name}: no gwc summary in {record[:400]}"
        assert int(summary.group(1)) >= 5
        named = {int(x) for x in summary.group(2).split()}
        assert set(ids) <= named, f"{name}: expected rules {ids}, the record names {sorted(named)}"


def _wait_for(path: Path, needles: List[str], deadline_s: float = 5.0) -> str:
    end = time.monotonic() + deadline_s
    text = ""
    while time.monotonic() < end:
        text = path.read_text(errors="replace") if path.exists() else ""
        if all(n in text for n in needles):
            break
        time.sleep(0.1)
    return text


def test_no_log_holds_a_payload(gateway):
    """Runs last: the access log, the error log and the WAF record never hold a payload
    (the access log's user_agent field aside: it records every request's User-Agent)."""
    if not _PAYLOADS:
        pytest.skip("no case ran")
    time.sleep(1.2)  # the access log is buffered with flush=1s
    logs = gateway["out"] / "logs"
    found = []
    for name in ("access.log", "error.log", "waf.log"):
        text = (logs / name).read_text(errors="replace") if (logs / name).exists() else ""
        for line in text.splitlines():
            if name == "access.log":
                line = re.sub(r'"user_agent":"(?:[^"\\]|\\.)*"', "", line)
            decoded = line.replace("%20", " ").replace("%27", "'").replace("%3D", "=")
            for payload in _PAYLOADS:
                if payload in line or payload in decoded:
                    found.append((name, payload, line[:200]))
    assert not found, f"payloads in logs: {found}"
    record = (logs / "waf.log").read_text(errors="replace")
    assert "---E--" not in record and '{"ok": true}' not in record, "a response body in the WAF record"
