"""The WAF's cost (issue 15): ModSecurity + CRS paranoia 1 on a GET with a few
query parameters and on a 1 KB JSON body, each against the same operation
with `waf: false` and bare proxy_pass, measured in the same interleaved
rounds as bench/run.py (gateway worker CPU per request, one worker).

    python bench/waf_bench.py [--quick] [--rounds N] [--secs S]
    python bench/waf_bench.py --startup [--waf-locations N] [--plain-locations M]

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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402  (also puts tests/ on sys.path)
import specs  # noqa: E402

QUERY = "/search?q=running+shoes&lang=en&page=2&sort=price"
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
    with tempfile.TemporaryDirectory(prefix="gwc-waf-bench-") as tmp:
        base = Path(tmp)
        host = base / "host.txt"
        host.write_text(HOST_HEADER)
        body_file = base / "body.json"
        body_file.write_text(json_body_1k())
        get = {"GWC_BENCH_HEADERS": str(host)}
        post = {**get, "GWC_BENCH_METHOD": "POST", "GWC_BENCH_BODY_FILE": str(body_file), "GWC_BENCH_CONTENT_TYPE": "application/json"}
        with contextlib.ExitStack() as stack:
            backend = run.start_backend(stack, base)
            bare = run.start_bare(stack, base, backend.port)
            gw = run.start_gwc(stack, base, "waf", waf_spec(backend.port)).log_off
            cases = [
                run.Case("bare_get", "bare proxy_pass, GET", bare, QUERY, shaping=get),
                run.Case("open_get", "gwc GET, waf: false", gw, "/open" + QUERY, shaping=get),
                run.Case("waf_get", "gwc GET, CRS paranoia 1", gw, QUERY, shaping=get),
                run.Case("bare_post", "bare proxy_pass, POST 1 KB JSON", bare, "/items", shaping=post),
                run.Case("open_post", "gwc POST 1 KB JSON, waf: false", gw, "/open/items", shaping=post),
                run.Case("waf_post", "gwc POST 1 KB JSON, CRS paranoia 1", gw, "/items", shaping=post),
            ]
            run.interleaved(cases, st)
    cs = {c.key: c.stats() for c in cases}
    rows = []
    for key, ref, bare_key in (("open_get", None, "bare_get"), ("waf_get", "open_get", "bare_get"),
                               ("open_post", None, "bare_post"), ("waf_post", "open_post", "bare_post")):
        c = cs[key]
        run.set_ratio(c, "vs_bare", cs[bare_key])
        added = run.set_added(c, "vs_open", cs[ref])["median"] if ref else None
        rows.append((c["label"], c["cpu_us_per_req_median"], c["ratio_vs_bare"], added))
    print("| case | gateway CPU µs/req (median) | × bare | added vs waf: false (µs, paired median) |")
    print("| --- | --- | --- | --- |")
    for label, us, ratio, added in rows:
        print(f"| {label} | {us:.1f} | {ratio:.2f} | {'' if added is None else f'{added:+.1f}'} |")
    run.RESULTS.mkdir(exist_ok=True)
    (run.RESULTS / "waf.json").write_text(json.dumps(cs, indent=1, default=str))


if __name__ == "__main__":
    main()
