"""The WAF's cost (issue 15): ModSecurity + CRS paranoia 1 on a GET with a few
query parameters and on a 1 KB JSON body, each against the same operation
with `waf: false`, against bare proxy_pass, and against a hand-written nginx
config doing the same WAF work (bench/handwritten/waf.conf.j2: Debian's
ModSecurity module and CRS, `modsecurity on` with the recommended settings,
engine On, JSON body processor, response bodies off, paranoia 1, gwc's default
anomaly thresholds 5/4, in front of the same keep-alive upstream as bare),
all measured in the same interleaved rounds as bench/run.py (gateway worker
CPU per request; every nginx runs run.WORKER_PROCESSES workers, checked).

    python bench/waf_bench.py [--quick] [--rounds N] [--secs S]
    python bench/waf_bench.py --startup [--waf-locations N] [--plain-locations M]

Before timing, each case answers its clean request as expected (200, the
backend's body), and both WAFs, gwc's and the hand-written one, refuse a
SQL injection in the query (`?q=1' OR '1'='1`) and in the JSON body with 403
while their `waf: false` / un-WAF'd routes pass it; while timing, every
response status is counted and unexpected ones are reported per case.

The table gives each case's CPU against bare proxy_pass and, for gwc's WAF
cases, what the WAF adds over `waf: false` and the ratio gwc WAF ÷
hand-written WAF, taken round by round (median, min–max over rounds) beside
the ratio of medians. The hand-written config proxies like bare (no
X-Forwarded-*, request id or Lua router), so that ratio also holds gwc's
routing and proxy work, which the `waf: false` rows show alone.

Prints a Markdown table and writes bench/results/waf.json. --startup instead
measures what the WAF costs before the first request: `nginx -t` time and the
worker's resident memory with N WAF locations of distinct settings (each a
location of its own) beside M operations without the WAF. Needs wrk, nginx
with the Lua module, and Debian's libnginx-mod-http-modsecurity + modsecurity-crs.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional
from urllib.parse import quote

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402  (also puts tests/ on sys.path)
import specs  # noqa: E402

QUERY = "/search?q=running+shoes&lang=en&page=2&sort=price"
# A simple SQL injection both WAFs must refuse (checked before timing).
ATTACK = "1' OR '1'='1"
ATTACK_QUERY = "/search?q=" + quote(ATTACK)
# Clients send a name: the CRS scores a numeric Host header (920350).
HOST_HEADER = "Host: api.example.com\n"


def waf_spec(backend_port: int) -> dict:
    spec = specs._root(backend_port, "bench waf")
    spec["openapi"] = "3.1.0"
    spec["x-gateway"]["validate"] = {"parameters": False, "body": False}
    spec["x-gateway"]["waf"] = {"paranoia": 1}
    query = [{"name": n, "in": "query", "schema": {"type": "string"}} for n in ("q", "lang", "page", "sort")]
    body = {"content": {"application/json": {"schema": {"type": "object"}}}}
    for prefix, waf in (("", None), ("/open", False)):
        gw = {} if waf is None else {"waf": waf}
        spec["paths"][f"{prefix}/search"] = {"x-gateway": gw, "get": {
            "operationId": f"search{prefix.replace('/', '_')}", "parameters": query, "responses": specs._ok()}}
        spec["paths"][f"{prefix}/items"] = {"x-gateway": gw, "post": {
            "operationId": f"create{prefix.replace('/', '_')}", "requestBody": body, "responses": specs._ok()}}
    return spec


def json_body_1k() -> str:
    item = {"name": "Dan's \"favourite\" mug", "homepage": "https://shop.example.com/items?id=7",
            "tags": ["kitchen", "gift", "ceramic"], "price": 12.5, "stock": 40}
    body = {"items": []}
    while len(json.dumps(body)) < 1000:
        body["items"].append(dict(item, id=len(body["items"]) + 1))
    return json.dumps(body)


def attack_body() -> str:
    return json.dumps({"items": [{"name": ATTACK, "id": 1}]})


def modsecurity_load_modules(gwc_conf: str) -> List[str]:
    """The load_module line(s) of the ModSecurity module in gwc's output, so
    the hand-written config loads the very same module file."""
    found = re.findall(r"(?m)^load_module\s+(\S*modsecurity\S*);", gwc_conf)
    if not found:
        raise RuntimeError("gwc's nginx.conf loads no ModSecurity module")
    return found


def start_handwritten(stack: contextlib.ExitStack, base: Path, backend_port: int, load_modules: List[str]) -> run.Server:
    """bench/handwritten/waf.conf.j2: ModSecurity + CRS in front of /search and /items, written by hand."""
    import jinja2

    port = run.free_port()
    prefix = run._prefix(base, "handwritten-waf")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(run.HANDWRITTEN)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    conf = env.get_template("waf.conf.j2").render(worker_processes=run.WORKER_PROCESSES, port=port, backend_port=backend_port,
                                                  load_modules=load_modules, audit_log=str(prefix / "logs" / "modsec_audit.log"))
    if f"\nworker_processes {run.WORKER_PROCESSES};\n" not in conf:
        raise RuntimeError(f"the hand-written WAF config does not set worker_processes {run.WORKER_PROCESSES}")
    (prefix / "nginx.conf").write_text(conf)
    return run.start_server(stack, "hand-written ModSecurity + CRS", prefix, port)


def check_blocking(checks: List[run.Case]) -> None:
    """One request each, before timing: attacks refused (403) by the WAFs, passed where the WAF is off."""
    for c in checks:
        run.check_response(c)
        run.log(f"checked {c.label}: {c.shaping.get('GWC_BENCH_METHOD', 'GET')} {c.path} -> {c.expect_status}")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _pr(p: Optional[dict], fmt: str = "%.3f") -> str:
    return "–" if p is None else f"**{fmt % p['median']}** ({fmt % p['min']}–{fmt % p['max']})"


def startup_spec(waf_locations: int, plain_locations: int) -> dict:
    """N WAF operations whose thresholds differ (so each has its own location) and M without the WAF."""
    spec = specs._root(9, "bench waf startup")
    spec["openapi"] = "3.1.0"
    spec["x-gateway"]["validate"] = {"parameters": False, "body": False}
    for i in range(waf_locations):
        spec["paths"][f"/waf{i}"] = {"x-gateway": {"waf": {"anomaly_threshold": {"inbound": 5 + i}}}, "get": {
            "operationId": f"waf{i}", "responses": specs._ok()}}
    for i in range(plain_locations):
        # A distinct body limit per operation: one location each.
        spec["paths"][f"/plain{i}"] = {"x-gateway": {"max_body_size": f"{1000 + i}k"}, "get": {
            "operationId": f"plain{i}", "responses": specs._ok()}}
    return spec


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def startup(waf_locations: int, plain_locations: int, runs: int = 3) -> dict:
    """`nginx -t` seconds (median of runs) and worker RSS (MB) of one worker after start."""
    from support.processes import Nginx, free_port, nginx_binary  # bench/run.py put tests/ on sys.path

    with tempfile.TemporaryDirectory(prefix="gwc-waf-startup-") as tmp:
        base = Path(tmp)
        spec_file = base / "api.yaml"
        spec_file.write_text(specs.dump(startup_spec(waf_locations, plain_locations)))
        out = base / "out"
        port = free_port()
        subprocess.run([sys.executable, "-m", "gwc.cli", "build", str(spec_file), "-o", str(out), "--listen",
                        f"127.0.0.1:{port}", "--install-dir", str(out)], check=True, capture_output=True, timeout=300)
        (out / "logs").mkdir(exist_ok=True)
        times = []
        for _ in range(runs):
            start = time.monotonic()
            subprocess.run([nginx_binary(), "-t", "-q", "-p", str(out) + "/", "-c", "nginx.conf", "-e", "logs/error.log"],
                           check=True, capture_output=True, timeout=300)
            times.append(time.monotonic() - start)
        nginx = Nginx(out).start([port], deadline_s=120)
        try:
            time.sleep(1.0)  # init_worker done
            rss = [_rss_kb(pid) / 1024 for pid in nginx.worker_pids()]
            master = _rss_kb(nginx.proc.pid) / 1024
        finally:
            nginx.stop()
    return {"waf_locations": waf_locations, "plain_locations": plain_locations, "nginx_t_s": statistics.median(times),
            "worker_rss_mb": max(rss), "master_rss_mb": master}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--secs", type=int)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--startup", action="store_true")
    parser.add_argument("--waf-locations", type=int, default=10)
    parser.add_argument("--plain-locations", type=int, default=0)
    args = parser.parse_args()
    if args.startup:
        r = startup(args.waf_locations, args.plain_locations)
        print(f"| {r['waf_locations']} WAF + {r['plain_locations']} plain locations | nginx -t {r['nginx_t_s']:.2f} s "
              f"| worker RSS {r['worker_rss_mb']:.1f} MB | master RSS {r['master_rss_mb']:.1f} MB |")
        return
    st = run.Settings(rounds=args.rounds or (2 if args.quick else 5), secs=args.secs or (1 if args.quick else 3),
                      warmup_secs=1, connections=args.connections, latency_rate=0, latency_secs=0, latency_rounds=0,
                      compile_runs=0, profile=False, keep_tmp=False)
    command = "python bench/waf_bench.py" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="gwc-waf-bench-") as tmp:
        base = Path(tmp)
        base.chmod(0o755)  # nginx workers (an unprivileged user when run as root) read the Lua modules lazily
        host = base / "host.txt"
        host.write_text(HOST_HEADER)
        body_file = base / "body.json"
        body_file.write_text(json_body_1k())
        attack_file = base / "attack.json"
        attack_file.write_text(attack_body())
        get = {"GWC_BENCH_HEADERS": str(host)}
        post = {**get, "GWC_BENCH_METHOD": "POST", "GWC_BENCH_BODY_FILE": str(body_file), "GWC_BENCH_CONTENT_TYPE": "application/json"}
        post_attack = {**post, "GWC_BENCH_BODY_FILE": str(attack_file)}
        with contextlib.ExitStack() as stack:
            backend = run.start_backend(stack, base)
            bare = run.start_bare(stack, base, backend.port)
            gwc_pair = run.start_gwc(stack, base, "waf", waf_spec(backend.port))
            gw = gwc_pair.log_off
            hand = start_handwritten(stack, base, backend.port,
                                     modsecurity_load_modules((gwc_pair.out_dir / "nginx.conf").read_text()))
            check_blocking([
                run.Case("chk", "gwc GET, CRS, SQL injection in the query", gw, ATTACK_QUERY, 403, shaping=get),
                run.Case("chk", "gwc GET, waf: false, SQL injection in the query", gw, "/open" + ATTACK_QUERY, 200, shaping=get),
                run.Case("chk", "gwc POST, CRS, SQL injection in the JSON body", gw, "/items", 403, shaping=post_attack),
                run.Case("chk", "gwc POST, waf: false, SQL injection in the JSON body", gw, "/open/items", 200, shaping=post_attack),
                run.Case("chk", "hand-written GET, CRS, SQL injection in the query", hand, ATTACK_QUERY, 403, shaping=get),
                run.Case("chk", "hand-written GET, no WAF, SQL injection in the query", hand, "/open" + ATTACK_QUERY, 200, shaping=get),
                run.Case("chk", "hand-written POST, CRS, SQL injection in the JSON body", hand, "/items", 403, shaping=post_attack),
                run.Case("chk", "hand-written POST, no WAF, SQL injection in the JSON body", hand, "/open/items", 200,
                         shaping=post_attack),
            ])
            cases = [
                run.Case("bare_get", "bare proxy_pass, GET", bare, QUERY, shaping=get),
                run.Case("open_get", "gwc GET, waf: false", gw, "/open" + QUERY, shaping=get),
                run.Case("waf_get", "gwc GET, CRS paranoia 1", gw, QUERY, shaping=get),
                run.Case("hand_get", "hand-written ModSecurity + CRS, GET", hand, QUERY, shaping=get),
                run.Case("bare_post", "bare proxy_pass, POST 1 KB JSON", bare, "/items", shaping=post),
                run.Case("open_post", "gwc POST 1 KB JSON, waf: false", gw, "/open/items", shaping=post),
                run.Case("waf_post", "gwc POST 1 KB JSON, CRS paranoia 1", gw, "/items", shaping=post),
                run.Case("hand_post", "hand-written ModSecurity + CRS, POST 1 KB JSON", hand, "/items", shaping=post),
            ]
            run.interleaved(cases, st)
    load_after = loadavg()
    cs = {c.key: c.stats() for c in cases}
    # key, reference for "added" (waf: false), bare reference, hand-written counterpart
    plan = (("bare_get", None, None, None), ("open_get", None, "bare_get", None), ("waf_get", "open_get", "bare_get", "hand_get"),
            ("hand_get", None, "bare_get", None),
            ("bare_post", None, None, None), ("open_post", None, "bare_post", None), ("waf_post", "open_post", "bare_post", "hand_post"),
            ("hand_post", None, "bare_post", None))
    for key, ref, bare_key, hand_key in plan:
        c = cs[key]
        if bare_key:
            run.set_ratio(c, "vs_bare", cs[bare_key])
            c["added_us_vs_bare_paired"] = run.set_added(c, "vs_bare", cs[bare_key])
        if ref:
            c["added_us_vs_open_paired"] = run.set_added(c, "vs_open", cs[ref])
        if hand_key:
            run.set_ratio(c, "vs_handwritten", cs[hand_key])
            c["added_us_vs_handwritten_paired"] = run.set_added(c, "vs_handwritten", cs[hand_key])
    print(f"- command: `{command}`; {st.rounds} interleaved rounds of `wrk -t1 -c{st.connections} -d{st.secs}s`; "
          f"worker_processes {run.WORKER_PROCESSES} on every nginx")
    print(f"- load average before {load_before}, after {load_after}")
    print()
    print("| case | gateway CPU µs/req (median) | min–max | × bare | × bare, per round (min–max) "
          "| added vs bare (µs, per round) | added vs waf: false (µs, paired median) "
          "| gwc ÷ hand-written, per round (min–max) | gwc ÷ hand-written, of medians | req/s | unexpected |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, ref, bare_key, hand_key in plan:
        c = cs[key]
        added = c.get("added_us_vs_open_paired")
        print(f"| {c['label']} | {c['cpu_us_per_req_median']:.1f} | {c['cpu_us_per_req_min']:.1f}–{c['cpu_us_per_req_max']:.1f} | "
              f"{'–' if not bare_key else '%.2f' % c['ratio_vs_bare']} | {_pr(c.get('ratio_vs_bare_paired'))} | "
              f"{_pr(c.get('added_us_vs_bare_paired'), '%+.1f')} | {'' if added is None else '%+.1f' % added['median']} | "
              f"{_pr(c.get('ratio_vs_handwritten_paired'))} | {'–' if not hand_key else '%.3f' % c['ratio_vs_handwritten']} | "
              f"{c['rps_median']:.0f} | {c['unexpected_responses']} |")
    run.RESULTS.mkdir(exist_ok=True)
    report = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "loadavg_before": load_before,
              "loadavg_after": load_after, "worker_processes": run.WORKER_PROCESSES,
              "settings": {k: v for k, v in vars(st).items() if k in ("rounds", "secs", "warmup_secs", "connections")},
              "cases": cs}
    (run.RESULTS / "waf.json").write_text(json.dumps(report, indent=1, default=str))

if __name__ == "__main__":
    main()
