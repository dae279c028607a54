"""The WAF's cost (issue 15): ModSecurity + CRS paranoia 1 on a GET with a few
query parameters and on a 1 KB JSON body, each against the same operation
with `waf: false` and bare proxy_pass, measured in the same interleaved
rounds as bench/run.py (gateway worker CPU per request, one worker).

    python bench/waf_bench.py [--quick] [--rounds N] [--secs S]

Prints a Markdown table and writes bench/results/waf.json. Needs wrk, nginx
with the Lua module, and Debian's libnginx-mod-http-modsecurity + modsecurity-crs.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--secs", type=int)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
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
