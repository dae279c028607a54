"""gwc's replacements of the CRS rules marked multiMatch detect and score exactly
what the CRS rules do (docs/waf.md, "Logs").

Two gateways, both in detection mode, side by side: gwc's output, and a plain
nginx with Debian's ModSecurity and the CRS exactly as installed (multiMatch
rules and all). Every case of CASES runs on paranoia 1 and 2 in both; for each
request the CRS-scored rule ids and the inbound anomaly score must be equal.
The cases exercise every stage of the four rules: a payload plain in the
value, one only a transformation reveals (url-encoded twice, a NUL, an
overlong UTF-8 dot, a caret for cmdLine, base64, SQL comments), one that
matches before and after a transformation (multiMatch scores it twice), in a
query parameter, its name, a header, a cookie and a JSON field.
Skipped, with the reason, where nginx or the ModSecurity module or CRS is absent.
"""
from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Set, Tuple

import pytest
import yaml

from gwc import waf as waf_model
from support.processes import Nginx, free_port, raw_request

from waf.test_waf_live import _missing_runtime, _wait_for

pytestmark = pytest.mark.live

B64_EVAL = base64.b64encode(b"eval(require('child_process'))").decode()

# (id, method, path and query, extra headers, JSON body or None): the query is sent as written.
CASES = [
    ("sqli-plain", "GET", "/search?q=1%27%20or%20%271%27%3D%271", {}, None),
    ("sqli-double-encoded", "GET", "/search?q=%2527%20or%201%3D1--", {}, None),
    ("sqli-referer", "GET", "/search?q=shoes", {"Referer": "http://x.test/?id=1' union select password from users--"}, None),
    ("sqli-cookie", "GET", "/search?q=shoes", {"Cookie": "sid=1' or '1'='1"}, None),
    ("sqli-arg-name", "GET", "/search?1%27%20or%20%271%27%3D%271=x", {}, None),
    ("sqli-json", "POST", "/items", {}, {"name": "x", "owner": "admin' or '1'='1' -- "}),
    ("traversal-plain", "GET", "/search?file=../../../etc/passwd", {}, None),
    ("traversal-double-encoded", "GET", "/search?file=..%252f..%252fetc%252fpasswd", {}, None),
    ("traversal-before-and-after", "GET", "/search?file=../x%252f..", {}, None),
    ("traversal-nul", "GET", "/search?file=x/..%2500/y", {}, None),
    ("traversal-overlong", "GET", "/search?file=x/%c0%ae%c0%ae/y", {}, None),
    ("traversal-caret", "GET", "/search?file=x/.%5e./y", {}, None),
    ("traversal-header", "GET", "/search?q=shoes", {"X-Path": "a/../../b"}, None),
    ("traversal-json", "POST", "/items", {}, {"path": "..\\..\\windows\\win.ini"}),
    ("nodejs-plain", "GET", "/search?q=this.constructor.constructor", {}, None),
    ("nodejs-base64", "GET", f"/search?q={B64_EVAL}", {}, None),
    ("nodejs-json", "POST", "/items", {}, {"code": "module.exports = 1"}),
    ("tautology", "GET", "/search?q=x%20or%20a%3Da", {}, None),
    ("tautology-comments", "GET", "/search?q=x%27/**/or/**/%27b%27%3D%27b", {}, None),
    ("tautology-json", "POST", "/items", {}, {"filter": "status is not closed"}),
    ("legit-query", "GET", "/search?q=running%20shoes&lang=en", {}, None),
    ("legit-json", "POST", "/items", {}, {"name": "O'Brien's shop", "url": "https://example.test/a/b?c=d", "n": 3}),
]
LEVELS = (1, 2)
HOST = "api.example.test"


def _gwc_spec(backend: int) -> dict:
    ok = {"200": {"description": "ok"}}
    body = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    query = [{"name": n, "in": "query", "schema": {"type": "string"}} for n in ("q", "lang", "file")]
    paths = {}
    for level in LEVELS:
        gw = {"waf": {"paranoia": level}}
        paths[f"/p{level}/search"] = {"x-gateway": gw, "get": {"operationId": f"search{level}", "parameters": query, "responses": ok}}
        paths[f"/p{level}/items"] = {"x-gateway": gw, "post": {"operationId": f"create{level}", "requestBody": body, "responses": ok}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "WAF equivalence", "version": "1"},
        "x-gateway": {
            "upstreams": {"app": {"servers": [f"http://127.0.0.1:{backend}"]}},
            "upstream": "app",
            "validate": {"parameters": False, "body": False},
            # every flagged request gets a record: the score of each is compared
            "waf": {"mode": "detect", "anomaly_threshold": {"inbound": 1}},
        },
        "paths": paths,
    }


def _plain_conf(prefix, port: int, backend: int) -> None:
    """nginx + ModSecurity + the CRS as Debian installs it, nothing of gwc's."""
    for level in LEVELS:
        (prefix / f"p{level}.conf").write_text(f"""
SecRuleEngine DetectionOnly
SecRequestBodyAccess On
SecRequestBodyLimit 131072
SecRequestBodyNoFilesLimit 131072
SecResponseBodyAccess Off
SecAuditEngine RelevantOnly
SecAuditLogRelevantStatus "^$"
SecAuditLogParts AHZ
SecAuditLogType Serial
SecAuditLogFormat Native
SecAuditLog {prefix}/logs/audit.log
SecRule REQUEST_HEADERS:Content-Type "@rx (?i)^application/json" "id:1,phase:1,pass,nolog,t:none,ctl:requestBodyProcessor=JSON"
SecAction "id:2,phase:1,pass,nolog,setvar:tx.paranoia_level={level},setvar:tx.executing_paranoia_level={level}"
Include {waf_model.CRS_SETUP}
Include {waf_model.CRS_RULES_DIR}/REQUEST-*.conf
SecAction "id:3,phase:2,pass,log,t:none,msg:'total %{{tx.anomaly_score}}'"
""", encoding="utf-8")
    locations = "".join(f"""
        location /p{level}/ {{
            modsecurity_rules_file {prefix}/p{level}.conf;
            proxy_pass http://127.0.0.1:{backend};
        }}""" for level in LEVELS)
    (prefix / "nginx.conf").write_text(f"""
load_module {waf_model.MODSECURITY_MODULE};
worker_processes 1;
pid logs/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port};
        modsecurity on;
        modsecurity_transaction_id "$http_x_case";
        {locations}
    }}
}}
""", encoding="utf-8")


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _handle

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def gateways(tmp_path_factory):
    why = _missing_runtime()
    if why:
        print(f"SKIP tests/waf equivalence: {why}")
        pytest.skip(why)
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    backend.daemon_threads = True
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    work = tmp_path_factory.mktemp("wafeq")
    spec = work / "api.yaml"
    spec.write_text(yaml.safe_dump(_gwc_spec(backend.server_address[1]), sort_keys=False), encoding="utf-8")
    out, plain = work / "out", work / "plain"
    plain.mkdir()
    gwc_port, plain_port = free_port(), free_port()
    proc = subprocess.run([sys.executable, "-m", "gwc.cli", "build", str(spec), "-o", str(out), "--listen",
                           f"127.0.0.1:{gwc_port}", "--install-dir", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    _plain_conf(plain, plain_port, backend.server_address[1])
    started = []
    try:
        started.append(Nginx(out).start([gwc_port]))
        started.append(Nginx(plain).start([plain_port]))
        yield {"gwc": (gwc_port, out / "logs" / "waf.log"), "plain": (plain_port, plain / "logs" / "audit.log")}
    finally:
        for nginx in started:
            nginx.stop()
        backend.shutdown()
        backend.server_close()


def _request(case_id: str, method: str, target: str, headers: dict, body) -> bytes:
    data = b"" if body is None else json.dumps(body).encode("utf-8")
    head = {"Host": HOST, "User-Agent": "gwc-waf-tests/1.0", "Accept": "application/json", "X-Case": case_id,
            **headers, "Connection": "close"}
    if body is not None:
        head.update({"Content-Type": "application/json", "Content-Length": str(len(data))})
    return (f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n").encode() + data


def _records(text: str) -> Dict[str, str]:
    out = {}
    for record in re.split(r"\n(?=---[A-Za-z0-9]{8}---A--\n)", text):
        m = re.search(r"---A--\n\[[^\]]+\] (\S+) ", record)
        if m:
            out[m.group(1)] = record
    return out


SCORING = set(waf_model.CRS_SCORING_RULES)


def _plain_result(record: str) -> Tuple[int, Set[int]]:
    score = int(re.search(r'\[msg "total (\d+)"\]', record).group(1))
    return score, {int(i) for i in re.findall(r'\[id "(\d+)"\]', record)} & SCORING


def _gwc_result(record) -> Tuple[int, Set[int]]:
    if record is None:  # below the threshold of 1: nothing scored
        return 0, set()
    m = re.search(r"inbound anomaly score (\d+) \(threshold 1\), rules([0-9 ]*)", record)
    return int(m.group(1)), {int(i) for i in m.group(2).split()}


def test_gwc_scores_what_the_installed_crs_scores(gateways):
    sent = []  # (case, gwc request id, plain transaction id)
    for level in LEVELS:
        for case_id, method, target, headers, body in CASES:
            name = f"{case_id}-p{level}"
            results = {}
            for side in ("gwc", "plain"):
                status, response_headers, _ = raw_request(gateways[side][0], _request(name, method, f"/p{level}{target}", headers, body))
                assert status == 200, (side, name, status)
                results[side] = response_headers.get("x-request-id") if side == "gwc" else name
            sent.append((name, results["gwc"], results["plain"]))
    gwc = _records(_wait_for(gateways["gwc"][1], [s[1] for s in sent if not s[0].startswith("legit")][-1:]))
    plain = _records(_wait_for(gateways["plain"][1], [s[2] for s in sent]))
    differ = []
    exercised: Set[int] = set()
    for name, gwc_id, plain_id in sent:
        expected, got = _plain_result(plain[plain_id]), _gwc_result(gwc.get(gwc_id))
        exercised |= expected[1]
        if expected != got:
            differ.append((name, "crs", expected, "gwc", got))
    assert not differ, differ
    assert set(waf_model.MULTIMATCH_BY_ID) <= exercised, "a case table that no longer reaches every multiMatch rule"
    assert "Matched Data" not in gateways["gwc"][1].read_text(errors="replace")
