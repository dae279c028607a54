"""HTTP at the edge (issue 10): what the response cache, CORS and compression
cost at runtime, as gateway worker CPU per request, measured like
bench/run.py: one worker per nginx (checked), interleaved rotated rounds,
ratios and differences taken within each round (median, min–max over rounds)
beside the ratio of medians.

    python bench/edge_bench.py [--quick] [--rounds N] [--secs S] [--keep-tmp]

Cases, each against its reference in the same rounds:

- cache hit of a 1 KB JSON response vs the same request proxied with the
  cache off (target: at most 0.8x), and vs a miss that refreshes the entry
  (a client's `Cache-Control: max-age=0` under `client_refresh: any`: bypass,
  proxied and stored);
- CORS on an actual request (allowed `Origin` sent) vs the same route without
  CORS receiving the same `Origin` (target: <= +1 µs);
- a preflight answered at the gateway vs bare nginx `return 204` receiving the
  same OPTIONS request (target: <= +2 µs);
- gzip (the default level) of a 10 KB JSON response vs the same response
  uncompressed, `Accept-Encoding: gzip` sent to both (report it); brotli too
  when gwc's output loads the brotli module.

Every gwc case runs on one gateway built from `edge_spec` (the output as
generated, with only its access_log line switched off in the bench's copy, as
bench/run.py's traffic scenario does); the same work in a hand-written config
(bench/handwritten/edge.conf.j2) runs against bare proxy_pass. A capability
whose `x-gateway` key gwc does not accept yet (`gwc validate` refuses a
one-operation spec with it) is left out of the spec and said so in the report.

Prints a Markdown table and writes bench/results/edge.md and edge.json.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import json
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402  (also puts tests/ on sys.path)
import specs  # noqa: E402
from support.processes import Nginx, free_port  # noqa: E402

ORIGIN = "https://app.example.com"          # listed exactly
WILDCARD_ORIGIN = "https://eu.example.com"  # matched by https://*.example.com
CORS_POLICY = {
    "origins": [ORIGIN, "https://*.example.com"],
    "methods": ["GET"],
    "headers": ["X-Trace", "Content-Type"],
    "expose": ["X-Backend"],
    "credentials": True,
    "max_age": 600,
}
FEATURES = ("cache", "cors", "compression")


# --- bodies and backend ---------------------------------------------------------------------


def json_body(target_bytes: int, seed: int) -> bytes:
    """An API-like JSON page of pets, exactly target_bytes: varied names, ids,
    tags and dates, so it compresses like a real response, not like a run of
    one repeated record; a pagination cursor pads it to the size."""
    rng = random.Random(seed)
    words = ["amber", "basil", "cedar", "dune", "ember", "fjord", "garnet", "hazel", "indigo", "juniper", "kestrel",
             "lumen", "moss", "nectar", "onyx", "pepper", "quartz", "rowan", "saffron", "tundra", "umber", "vesper"]
    items: List[dict] = []
    while True:
        n = len(items) + 1
        item = {
            "id": rng.randrange(10_000, 99_999_999),
            "name": f"{rng.choice(words).title()} {rng.choice(words)}",
            "status": rng.choice(["available", "pending", "sold"]),
            "tags": rng.sample(words, rng.randrange(1, 4)),
            "price": round(rng.uniform(1, 500), 2),
            "updated": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
            "owner": {"id": f"u-{rng.randrange(16**8):08x}", "region": rng.choice(["eu-west-1", "us-east-2", "ap-south-1"])},
            "seq": n,
        }
        if len(page(items + [item], "")) > target_bytes:
            break
        items.append(item)
    pad = target_bytes - len(page(items, ""))
    out = page(items, "".join(rng.choice("0123456789abcdef") for _ in range(pad)))
    assert len(out) == target_bytes
    return out


def page(items: List[dict], cursor: str) -> bytes:
    return json.dumps({"items": items, "cursor": cursor}, separators=(",", ":")).encode()


BODY_1K = json_body(1024, 1)
BODY_10K = json_body(10240, 10)


def worker_pids(nginx: Nginx) -> List[int]:
    """The master's children titled as workers: a proxy_cache adds a cache
    manager and (for a minute) a cache loader, which do not serve requests."""
    out = []
    for pid in nginx.worker_pids():
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("nginx: worker process"):
            out.append(pid)
    return out


def start_server(stack: contextlib.ExitStack, label: str, prefix: Path, port: int, deadline_s: float = 10.0) -> run.Server:
    nginx = Nginx(prefix)
    stack.callback(nginx.stop)
    nginx.start([port])
    end = time.monotonic() + deadline_s
    pids: List[int] = []
    while time.monotonic() < end:
        pids = worker_pids(nginx)
        if len(pids) == run.WORKER_PROCESSES:
            return run.Server(label, nginx, port, pids[0])
        time.sleep(0.05)
    raise RuntimeError(f"expected exactly {run.WORKER_PROCESSES} nginx worker under {prefix}, found {pids}")


def start_backend(stack: contextlib.ExitStack, base: Path) -> run.Server:
    """nginx serving the 1 KB JSON at every path and the 10 KB JSON at paths
    ending in 10k, as application/json, without ETag."""
    port = free_port()
    prefix = run._prefix(base, "backend")
    docs = prefix / "docs"
    docs.mkdir()
    (docs / "1k.json").write_bytes(BODY_1K)
    (docs / "10k.json").write_bytes(BODY_10K)
    (prefix / "nginx.conf").write_text(run._single_worker_conf(f"""    server {{
        listen 127.0.0.1:{port};
        root docs;
        etag off;
        default_type application/json;
        location / {{ try_files /1k.json =404; }}
        location ~ 10k$ {{ try_files /10k.json =404; }}
    }}"""))
    return start_server(stack, "backend", prefix, port)


def start_bare(stack: contextlib.ExitStack, base: Path, backend_port: int) -> run.Server:
    """bench/run.py's bare proxy_pass, plus `location /cors/ { return 204; }`:
    bare nginx answering the preflight request with nothing but a 204."""
    port = free_port()
    prefix = run._prefix(base, "bare")
    (prefix / "nginx.conf").write_text(run._single_worker_conf(f"""    upstream be {{
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
        location /cors/ {{
            return 204;
        }}
    }}"""))
    return start_server(stack, "bare", prefix, port)


def start_handwritten(stack: contextlib.ExitStack, base: Path, backend_port: int, compression: dict) -> run.Server:
    import jinja2

    port = free_port()
    prefix = run._prefix(base, "handwritten")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(run.HANDWRITTEN)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    conf = env.get_template("edge.conf.j2").render(worker_processes=run.WORKER_PROCESSES, port=port,
                                                   backend_port=backend_port, **compression)
    (prefix / "nginx.conf").write_text(conf)
    return start_server(stack, "hand-written nginx", prefix, port)


# --- the gwc spec ---------------------------------------------------------------------------


def edge_spec(backend_port: int, features: Tuple[str, ...]) -> dict:
    spec = specs._root(backend_port, "bench edge")
    xg = spec["x-gateway"]
    xg["validate"] = {"parameters": False, "body": False}
    if "cache" in features:
        xg["cache_zone"] = {"size": "16m", "path": "cache", "inactive": "10m"}

    def route(path: str, op: str, gw: Optional[dict] = None) -> None:
        item: dict = {"parameters": [specs._param("id")], "get": {"operationId": op, "responses": specs._ok()}}
        if gw:
            item["x-gateway"] = gw
        spec["paths"][path] = item

    route("/plain/{id}", "plain")
    if "cache" in features:
        route("/cached/{id}", "cached", {"cache": {"ttl": "10m"}})
        route("/refresh/{id}", "refresh", {"cache": {"ttl": "10m", "client_refresh": "any"}})
    if "cors" in features:
        route("/cors/{id}", "cors", {"cors": CORS_POLICY})
    if "compression" in features:
        route("/gzip/{id}", "gzip", {"compression": {"min_size": 1024, "types": ["application/json"]}})
    return spec


def supported_features(base: Path, backend_port: int) -> Dict[str, str]:
    """feature -> "" when `gwc validate` accepts a spec with it, else why not."""
    out = {}
    for feature in FEATURES:
        path = base / f"probe-{feature}.yaml"
        path.write_text(specs.dump(edge_spec(backend_port, (feature,))))
        proc = subprocess.run(run.gwc_command() + ["validate", "--no-cache", str(path)], capture_output=True, text=True, timeout=120)
        out[feature] = "" if proc.returncode == 0 else (proc.stderr or proc.stdout).strip().splitlines()[-1][:300]
    return out


@dataclass
class Gwc:
    logged: run.Server
    log_off: run.Server
    out_dir: Path
    conf: str


def start_gwc(stack: contextlib.ExitStack, base: Path, spec: dict) -> Gwc:
    """The spec built twice: as generated, and with its access_log switched off
    in the bench's copy (the measured one)."""
    spec_path = base / "edge.yaml"
    spec_path.write_text(specs.dump(spec))
    port, port_off = free_port(), free_port()
    out, out_off = base / "gwc-edge", base / "gwc-edge-log-off"
    run.gwc_build(spec_path, out, port)
    run.gwc_build(spec_path, out_off, port_off)
    for d in (out, out_off):
        if f"\nworker_processes {run.WORKER_PROCESSES};\n" not in (d / "nginx.conf").read_text():
            raise RuntimeError(f"{d}/nginx.conf does not set worker_processes {run.WORKER_PROCESSES}")
    run.switch_access_log_off(out_off)
    logged = start_server(stack, "gwc edge", out, port)
    log_off = start_server(stack, f"gwc edge, {run.LOG_OFF_LABEL}", out_off, port_off)
    return Gwc(logged, log_off, out, (out / "nginx.conf").read_text())


def compression_settings(gwc_conf: Optional[str]) -> dict:
    """The gzip and brotli levels and minimum length gwc generated for /gzip,
    so the hand-written config does the same work; nginx's own level and 1024
    when gwc has no compression yet."""
    found = {"gzip_level": 1, "min_length": 1024, "brotli_level": None, "load_modules": []}
    if not gwc_conf:
        return found
    m = re.search(r"gzip_comp_level\s+(\d+);", gwc_conf)
    if m:
        found["gzip_level"] = int(m.group(1))
    m = re.search(r"gzip_min_length\s+(\d+);", gwc_conf)
    if m:
        found["min_length"] = int(m.group(1))
    m = re.search(r"brotli_comp_level\s+(\d+);", gwc_conf)
    if m and re.search(r"(?m)^\s*brotli on;", gwc_conf):
        found["brotli_level"] = int(m.group(1))
        found["load_modules"] = re.findall(r"(?m)^load_module\s+(\S*brotli\S*);", gwc_conf)
    return found


# --- checks ---------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: Dict[str, List[str]]
    body: bytes

    def header(self, name: str) -> str:
        return ", ".join(self.headers.get(name.lower(), []))


def fetch(server: run.Server, path: str, method: str = "GET", headers: Optional[Dict[str, str]] = None, timeout_s: float = 5.0) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout_s)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        hs: Dict[str, List[str]] = {}
        for k, v in resp.getheaders():
            hs.setdefault(k.lower(), []).append(v)
        return Reply(resp.status, hs, resp.read())
    finally:
        conn.close()


def _decoded(reply: Reply) -> bytes:
    enc = reply.header("content-encoding")
    if enc == "gzip":
        return gzip.decompress(reply.body)
    if enc == "br":
        try:
            import brotli  # type: ignore
        except ImportError:
            return b""  # not checkable here; the length check still applies
        return brotli.decompress(reply.body)
    return reply.body


def expect(cond: bool, what: str, reply: Reply) -> None:
    if not cond:
        raise RuntimeError(f"{what}: got {reply.status} {reply.headers} body[:200]={reply.body[:200]!r}")


def check_plain(body: bytes, encoding: str = "") -> Callable[[Reply], None]:
    def check(r: Reply) -> None:
        expect(r.status == 200, "status 200", r)
        expect(r.header("content-encoding") == encoding, f"Content-Encoding {encoding or 'none'}", r)
        decoded = _decoded(r)
        if encoding and not decoded:
            expect(len(r.body) < len(body), "a compressed body shorter than the original", r)
        else:
            expect(decoded == body, "the backend's body", r)
        expect(not r.header("access-control-allow-origin"), "no CORS header", r)
    return check


def check_cache(status: str) -> Callable[[Reply], None]:
    def check(r: Reply) -> None:
        check_plain(BODY_1K)(r)
        expect(r.header("x-cache-status") == status, f"X-Cache-Status {status}", r)
    return check


def check_cors(origin: str) -> Callable[[Reply], None]:
    def check(r: Reply) -> None:
        expect(r.status == 200 and r.body == BODY_1K, "200 and the backend's body", r)
        expect(r.header("access-control-allow-origin") == origin, f"Access-Control-Allow-Origin {origin}", r)
        expect(r.header("access-control-allow-credentials") == "true", "Access-Control-Allow-Credentials true", r)
        expect("origin" in r.header("vary").lower(), "Vary: Origin", r)
    return check


def check_preflight(origin: Optional[str]) -> Callable[[Reply], None]:
    def check(r: Reply) -> None:
        expect(r.status == 204, "204", r)
        if origin is None:
            return
        expect(r.header("access-control-allow-origin") == origin, f"Access-Control-Allow-Origin {origin}", r)
        expect("GET" in r.header("access-control-allow-methods"), "Access-Control-Allow-Methods with GET", r)
        expect("x-trace" in r.header("access-control-allow-headers").lower(), "Access-Control-Allow-Headers with X-Trace", r)
    return check


# --- cases ----------------------------------------------------------------------------------


@dataclass
class EdgeCase:
    case: run.Case
    method: str
    headers: Dict[str, str]
    check: Callable[[Reply], None]
    reference: Optional[str] = None      # key of the case it is compared with
    group: str = ""
    response_bytes: int = 0               # body bytes on the wire, from the check
    primes: int = 0                       # requests before the check (fill the cache)

    def verify(self) -> None:
        reply = None
        for _ in range(self.primes + 1):
            reply = fetch(self.case.server, self.case.path, self.method, self.headers)
        assert reply is not None
        try:
            self.check(reply)
        except RuntimeError as exc:
            raise RuntimeError(f"{self.case.label} {self.method} {self.case.path}: {exc}") from None
        self.response_bytes = len(reply.body)


def header_file(base: Path, name: str, headers: Dict[str, str]) -> str:
    path = base / f"{name}.headers"
    path.write_text("".join(f"{k}: {v}\n" for k, v in headers.items()))
    return str(path)


def blocks(cases: List[EdgeCase]) -> List[List[EdgeCase]]:
    """Each reference with the cases compared with it, in one block."""
    out = [[c] for c in cases if c.reference is None]
    for block in out:
        block += [c for c in cases if c.reference == block[0].case.key]
    return out


def interleaved(cases: List[EdgeCase], st: run.Settings) -> None:
    """bench/run.py's interleaved(), with this bench's response checks, and
    each case run next to its reference: a round runs the blocks (a reference
    and the cases compared with it) in rotated order, and rotates the cases
    inside each block, so every case runs first in turn and the two sides of
    each within-round ratio run seconds apart, not a round apart. The
    differences sought here (a µs or two) are far below the load swings of
    a shared machine over a round."""
    for c in cases:
        c.verify()
    for c in cases:
        run.wrk(c.case.server.url(c.case.path), st.warmup_secs, st.connections, c.case.shaping)
    groups = blocks(cases)
    for r in range(st.rounds):
        order = [c for block in run.rotated(groups, r) for c in run.rotated(block, r)]
        for position, c in enumerate(order):
            sample = {"round": r + 1, "position": position + 1, **c.case.measure(st.secs, st.connections)}
            c.case.samples.append(sample)
            run.log(f"round {r + 1}/{st.rounds} {c.case.label:<58} {sample['cpu_us_per_req']:7.2f} µs/req {sample['rps']:9.0f} req/s")
    for c in cases:  # still answering as checked (a hit still a hit)
        c.verify()


def build_cases(base: Path, bare: run.Server, hand: run.Server, gw: Optional[Gwc], features: Dict[str, str], brotli: bool) -> List[EdgeCase]:
    origin_h = {"Origin": ORIGIN}
    wild_h = {"Origin": WILDCARD_ORIGIN}
    preflight_h = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "x-trace"}
    gzip_h = {"Accept-Encoding": "gzip"}
    br_h = {"Accept-Encoding": "br"}
    refresh_h = {"Cache-Control": "max-age=0"}
    files = {name: header_file(base, name, h) for name, h in
             (("origin", origin_h), ("wildcard", wild_h), ("preflight", preflight_h), ("gzip", gzip_h), ("br", br_h), ("refresh", refresh_h))}

    def case(key: str, label: str, server: run.Server, path: str, check: Callable[[Reply], None], group: str,
             reference: Optional[str] = None, headers: Optional[Tuple[str, Dict[str, str]]] = None, method: str = "GET",
             status: int = 200, primes: int = 0) -> EdgeCase:
        shaping = {}
        hs: Dict[str, str] = {}
        if headers:
            shaping["GWC_BENCH_FIXED_HEADERS"] = files[headers[0]]
            hs = headers[1]
        if method != "GET":
            shaping["GWC_BENCH_METHOD"] = method
        return EdgeCase(run.Case(key, label, server, path, status, shaping=shaping), method, hs, check, reference, group, primes=primes)

    on = lambda f: gw is not None and not features.get(f)  # noqa: E731
    cases = [
        case("bare_1k", "bare proxy_pass, 1 KB", bare, "/plain/1k", check_plain(BODY_1K), "cache"),
        case("hand_hit", "hand-written proxy_cache hit, 1 KB", hand, "/cached/1k", check_cache("HIT"), "cache", "bare_1k", primes=1),
        case("hand_hit_tuned", "hand-written proxy_cache hit, open_file_cache + sendfile off, 1 KB", hand, "/cached-tuned/1k",
             check_cache("HIT"), "cache", "bare_1k", primes=1),
    ]
    if gw is not None:
        cases.append(case("gwc_plain_1k", "gwc, cache off (miss), 1 KB", gw.log_off, "/plain/1k", check_plain(BODY_1K), "cache"))
    if on("cache"):
        cases += [
            case("gwc_hit", "gwc cache hit, 1 KB", gw.log_off, "/cached/1k", check_cache("HIT"), "cache", "gwc_plain_1k", primes=1),
            case("gwc_refresh", "gwc cache refresh (max-age=0: bypass, proxied, stored), 1 KB", gw.log_off, "/refresh/1k",
                 check_cache("BYPASS"), "cache", "gwc_plain_1k", ("refresh", refresh_h)),
        ]
    cases += [
        case("bare_origin", "bare proxy_pass, Origin sent", bare, "/plain/1k", check_plain(BODY_1K), "cors", headers=("origin", origin_h)),
        case("hand_cors", "hand-written CORS, actual request", hand, "/cors/1k", check_cors(ORIGIN), "cors", "bare_origin", ("origin", origin_h)),
        case("bare_204", "bare nginx `return 204`, preflight request", bare, "/cors/1k", check_preflight(None), "cors",
             headers=("preflight", preflight_h), method="OPTIONS", status=204),
        case("hand_preflight", "hand-written `if OPTIONS ... return 204` + origin map", hand, "/cors/1k", check_preflight(ORIGIN), "cors",
             "bare_204", ("preflight", preflight_h), "OPTIONS", 204),
    ]
    if gw is not None:
        cases.append(case("gwc_plain_origin", "gwc, no CORS, Origin sent", gw.log_off, "/plain/1k", check_plain(BODY_1K), "cors",
                          headers=("origin", origin_h)))
    if on("cors"):
        cases += [
            case("gwc_cors", "gwc CORS, actual request, exact origin", gw.log_off, "/cors/1k", check_cors(ORIGIN), "cors",
                 "gwc_plain_origin", ("origin", origin_h)),
            case("gwc_cors_wild", "gwc CORS, actual request, wildcard-subdomain origin", gw.log_off, "/cors/1k",
                 check_cors(WILDCARD_ORIGIN), "cors", "gwc_plain_origin", ("wildcard", wild_h)),
            case("gwc_preflight", "gwc preflight answered at the gateway", gw.log_off, "/cors/1k", check_preflight(ORIGIN), "cors",
                 "bare_204", ("preflight", preflight_h), "OPTIONS", 204),
        ]
    cases += [
        case("bare_10k", "bare proxy_pass, 10 KB, Accept-Encoding: gzip", bare, "/plain/10k", check_plain(BODY_10K), "compression",
             headers=("gzip", gzip_h)),
        case("hand_gzip", "hand-written gzip, 10 KB", hand, "/gzip/10k", check_plain(BODY_10K, "gzip"), "compression", "bare_10k",
             ("gzip", gzip_h)),
    ]
    if gw is not None:
        cases.append(case("gwc_plain_10k", "gwc, no compression, 10 KB, Accept-Encoding: gzip", gw.log_off, "/plain/10k",
                          check_plain(BODY_10K), "compression", headers=("gzip", gzip_h)))
    if on("compression"):
        cases.append(case("gwc_gzip", "gwc gzip, 10 KB", gw.log_off, "/gzip/10k", check_plain(BODY_10K, "gzip"), "compression",
                          "gwc_plain_10k", ("gzip", gzip_h)))
        if brotli:
            cases += [
                case("hand_br", "hand-written brotli, 10 KB", hand, "/gzip/10k", check_plain(BODY_10K, "br"), "compression", "bare_10k",
                     ("br", br_h)),
                case("gwc_br", "gwc brotli, 10 KB", gw.log_off, "/gzip/10k", check_plain(BODY_10K, "br"), "compression",
                     "gwc_plain_10k", ("br", br_h)),
            ]
    return cases


# --- report ---------------------------------------------------------------------------------


def results(cases: List[EdgeCase]) -> Dict[str, dict]:
    cs = {c.case.key: {**c.case.stats(), "group": c.group, "reference": c.reference, "method": c.method,
                       "request_headers": c.headers, "response_body_bytes": c.response_bytes} for c in cases}
    for c in cs.values():
        ref = c["reference"]
        if ref:
            run.set_ratio(c, "vs_reference", cs[ref])
            c["added_us_vs_reference_paired"] = run.set_added(c, "vs_reference", cs[ref])
    if "gwc_refresh" in cs and "gwc_hit" in cs:
        run.set_ratio(cs["gwc_hit"], "vs_refresh", cs["gwc_refresh"])
    return cs


def _pr(p: Optional[dict], digits: int = 3, signed: bool = False) -> str:
    if p is None:
        return "–"
    fmt = "%+.{0}f" if signed else "%.{0}f"
    f = (fmt.format(digits))
    return f"**{f % p['median']}** ({f % p['min']}–{f % p['max']})"


def targets(cs: Dict[str, dict]) -> List[str]:
    rows = ["| issue 10 target | gwc, per round (min–max) | gwc, of medians | hand-written, per round | met (gwc, per-round median) |",
            "| --- | --- | --- | --- | :---: |"]

    def verdict(ok: bool) -> str:
        return "yes" if ok else "**no**"

    if "gwc_hit" in cs:
        c, h, ht = cs["gwc_hit"], cs["hand_hit"], cs["hand_hit_tuned"]
        rows.append(f"| cache hit ≤ 0.8× the CPU of the miss (cache off), 1 KB JSON | {_pr(c['ratio_vs_reference_paired'])}× | "
                    f"{c['ratio_vs_reference']:.3f}× | {_pr(h['ratio_vs_reference_paired'])}× vs bare; "
                    f"tuned {_pr(ht['ratio_vs_reference_paired'])}× | "
                    f"{verdict(c['ratio_vs_reference_paired']['median'] <= 0.8)} |")
        if "ratio_vs_refresh_paired" in c:
            rows.append(f"| (cache hit vs a refreshing miss, proxied and stored) | {_pr(c['ratio_vs_refresh_paired'])}× | "
                        f"{c['ratio_vs_refresh']:.3f}× | | {verdict(c['ratio_vs_refresh_paired']['median'] <= 0.8)} |")
    if "gwc_cors" in cs:
        for key, what in (("gwc_cors", "exact origin"), ("gwc_cors_wild", "wildcard-subdomain origin")):
            c, h = cs[key], cs["hand_cors"]
            rows.append(f"| CORS on an actual request ≤ +1 µs ({what}) | {_pr(c['added_us_vs_reference_paired'], 2, True)} µs | "
                        f"{c['added_us_vs_reference']:+.2f} µs | {_pr(h['added_us_vs_reference_paired'], 2, True)} µs vs bare | "
                        f"{verdict(c['added_us_vs_reference_paired']['median'] <= 1.0)} |")
    if "gwc_preflight" in cs:
        c, h = cs["gwc_preflight"], cs["hand_preflight"]
        rows.append(f"| preflight ≤ bare `return 204` + 2 µs | {_pr(c['added_us_vs_reference_paired'], 2, True)} µs | "
                    f"{c['added_us_vs_reference']:+.2f} µs | {_pr(h['added_us_vs_reference_paired'], 2, True)} µs | "
                    f"{verdict(c['added_us_vs_reference_paired']['median'] <= 2.0)} |")
    for key, hand, what in (("gwc_gzip", "hand_gzip", "gzip"), ("gwc_br", "hand_br", "brotli")):
        if key in cs:
            c, h = cs[key], cs[hand]
            rows.append(f"| {what} of a 10 KB JSON: report it ({cs[key]['response_body_bytes']} B on the wire) | "
                        f"{_pr(c['added_us_vs_reference_paired'], 2, True)} µs, {_pr(c['ratio_vs_reference_paired'])}× | "
                        f"{c['added_us_vs_reference']:+.2f} µs | {_pr(h['added_us_vs_reference_paired'], 2, True)} µs vs bare | (report) |")
    return rows


def markdown(report: dict) -> str:
    env, st, cs = report["environment"], report["settings"], report["cases"]
    lines = [
        "# gwc edge benchmark (issue 10: cache, CORS, compression)",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}; load average before {report['loadavg_before']}, after {report['loadavg_after']}",
        f"- machine: {env['cores']} cores ({env['cpu_model']}), Linux {env['kernel']}",
        f"- nginx {env['nginx']}; {env['wrk']}; gwc {env['gwc']} at {env['git_commit']}",
        f"- CPU: `wrk -t1 -c{st['connections']} -d{st['secs']}s` (keep-alive), {st['rounds']} interleaved rounds, "
        "each case run in a block with its reference (blocks rotated, and the cases within each block); "
        "gateway CPU = Δ first field of the single worker's `/proc/<pid>/schedstat` ÷ requests completed. "
        "Per round = median over rounds of the within-round ratio or difference (min–max); of medians after it.",
        f"- every nginx runs `worker_processes {report['worker_processes']}`, checked (cache manager and loader processes are "
        "not workers and are not counted); gwc measured with its access_log switched off in the bench's copy.",
        f"- compression: gwc's generated levels, copied into the hand-written config: {report['compression']}",
        "",
    ]
    missing = {f: why for f, why in report["features"].items() if why}
    for f, why in missing.items():
        lines.append(f"- **{f}: not measured**: `{why}`")
    if missing:
        lines.append("")
    lines += [
        "| case | request | CPU µs/req (median) | min–max | reference | vs reference, per round (min–max) | added µs, per round (min–max) "
        "| added µs, of medians | body B | req/s | unexpected |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in cs.values():
        ref = c["reference"]
        req = f"{c['method']} `{c['path']}`" + "".join(f", {k}: {v}" for k, v in c["request_headers"].items())
        lines.append(
            f"| {c['label']} | {req} | {c['cpu_us_per_req_median']:.2f} | {c['cpu_us_per_req_min']:.2f}–{c['cpu_us_per_req_max']:.2f} | "
            f"{cs[ref]['label'] if ref else '–'} | {_pr(c.get('ratio_vs_reference_paired'))} | "
            f"{_pr(c.get('added_us_vs_reference_paired'), 2, True)} | "
            f"{'–' if not ref else '%+.2f' % c['added_us_vs_reference']} | {c['response_body_bytes']} | {c['rps_median']:.0f} | "
            f"{c['unexpected_responses']} |"
        )
    lines += ["", *targets(cs), ""]
    return "\n".join(lines)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 rounds of 1 s: a smoke run, noisy")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 8, quick 2)")
    p.add_argument("--secs", type=int, help="seconds per wrk run (default 2, quick 1)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--keep-tmp", action="store_true", help="keep the configs and logs")
    p.add_argument("--without", action="append", default=[], choices=FEATURES,
                   help="leave a capability out of the gwc spec (repeatable), e.g. one still being built")
    p.add_argument("--out", default=str(run.RESULTS))
    args = p.parse_args(argv)
    run.preflight(["edge"])
    st = run.Settings(rounds=args.rounds or (2 if args.quick else 8), secs=args.secs or (1 if args.quick else 2),
                      warmup_secs=1, connections=args.connections, latency_rate=0, latency_secs=0, latency_rounds=0,
                      compile_runs=0, profile=False, keep_tmp=args.keep_tmp)
    report: dict = {
        "command": "python bench/edge_bench.py" + (" " + shlex.join(argv) if argv else ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "loadavg_before": loadavg(),
        "environment": run.environment(),
        "settings": {k: v for k, v in vars(st).items() if k in ("rounds", "secs", "warmup_secs", "connections")},
        "worker_processes": run.WORKER_PROCESSES,
    }
    tmp = tempfile.mkdtemp(prefix="gwc-edge-bench-")
    Path(tmp).chmod(0o755)  # nginx workers (an unprivileged user when run as root) read the Lua modules lazily
    base = Path(tmp)
    try:
        with contextlib.ExitStack() as stack:
            backend = start_backend(stack, base)
            bare = start_bare(stack, base, backend.port)
            features = supported_features(base, backend.port)
            for f in args.without:
                features[f] = "left out (--without)"
            report["features"] = features
            for f, why in features.items():
                run.log(f"{f}: {'measured' if not why else 'not measured: ' + why}")
            spec = edge_spec(backend.port, tuple(f for f in FEATURES if not features[f]))
            gw = start_gwc(stack, base, spec)
            comp = compression_settings(gw.conf if not features["compression"] else None)
            report["compression"] = {k: v for k, v in comp.items() if k != "load_modules"}
            hand = start_handwritten(stack, base, backend.port, comp)
            ops = [("/plain/1k", "plain", 200)] + [(p, op, 200) for p, op, f in (
                ("/cached/1k", "cached", "cache"), ("/refresh/1k", "refresh", "cache"), ("/cors/1k", "cors", "cors"),
                ("/gzip/10k", "gzip", "compression")) if not features[f]]
            run.verify_operations(gw.logged, ops)
            cases = build_cases(base, bare, hand, gw, features, brotli=comp["brotli_level"] is not None)
            interleaved(cases, st)
    finally:
        if args.keep_tmp:
            run.log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report["loadavg_after"] = loadavg()
    report["cases"] = results(cases)
    text = markdown(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "edge.md").write_text(text)
    (out / "edge.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(text)
    run.log(f"wrote {out / 'edge.md'} and {out / 'edge.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
