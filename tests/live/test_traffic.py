"""Rate limits, plans and quotas against a real nginx on one node, as data.

Case files are cases/traffic/*.yaml:

    specs: [ietf, legacy, both, none]     # gateway variants (VARIANTS) every case runs on
    cases:
      - name: per-ip limit
        specs: [ietf]                      # optional: this case's own variants
        slow: true                         # runs more than ~5 s (pytest -m slow)
        steps:
          - send:
              path: /ip                    # method (GET), headers as in harness requests
              key: k-pro                   # X-API-Key of a consumer in KEYS
              basic: ann                   # basic auth as a user in BASIC_USERS
              token: {claims: {sub: __UNIQ__, plan: pro}}   # a JWT minted now (tests/auth/auth_tokens.py)
              client: 2                    # source address: the case's client n (default 1)
            times: 3                       # send it this many times (default 1) ...
            every: 0.0555                  # ... one every this many seconds, on an absolute schedule
            parallel: true                 # ... or all at once, from threads
            for: 2.0                       # ... or as fast as possible for this long
            expect: {...}                  # checked on every response of the step (below)
            expect_by_spec: {none: {...}}  # merged over expect for one variant
            count: {200: 3, 429: 1}        # statuses of the step's responses, exactly
            allowed: {min: 5, max: 6}      # how many of them were admitted (any non-429)
            bound: {rate: 20, burst: 2}    # admitted <= rate * W + burst, W the step's wall time
            gcra: {interval_ms: 50, capacity: 2}   # each answer against a bucket on the client's clock (gcra_errors)
          - sleep: 1.2

Per response (`expect`):
    status, problem (a subset of the problem+json body), retry_after (int,
    [lo, hi], null for absent, or "day"/"week:<offset>"/"month:<offset>" for
    the seconds to the end of that UTC period), error_log (an [error] text
    this step provokes on purpose, e.g. a refused upstream connection), and
    limit: the rate-limit state the variant's headers must show:
        limit: {policy: ['"per-ip";q=3;w=60'], name: per-ip, r: 2, t: [19, 20]}
        limit: null                       # no rate-limit header at all
    ietf shows RateLimit-Policy (the policy items joined by ", ") and
    RateLimit ("name";r=R;t=T); legacy X-RateLimit-Limit (the deciding
    policy's q), -Remaining (r), -Reset (t); both all five; none none.
    In policy items and t, "day" / "week:<o>" / "month:<o>" stand for the
    period's length / the seconds to its end (w and t of a quota).
    log: fields of the request's JSON access-log entry (reason, limit,
    limit_remaining, consumer, plan), checked by test_access_log.

`__UNIQ__` in a request or an expectation is a value fresh to the case and
variant (a tenant, an org, a JWT sub), and every case has its own client
addresses (127.1.x.y), so cases never share a bucket; `route` and `global`
buckets belong to one case each. The pool's gateways have counted every
plan's quota on each worker before the cases run; `cold` has not. Every case also sends
X-Case, which the echo backend counts: it must see exactly the requests that
came back from it, so a refused request never reaches it. Every case checks
that the error log gained no [error]/[crit]/[alert]/[emerg] line it did not
declare.
"""
from __future__ import annotations

import base64
import calendar
import hashlib
import json
import math
import re
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import yaml

import harness
from gwc import runtime
from support.processes import Nginx, _EchoHandler, closed_port, free_port, log_since, log_size, parse_response

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "auth"))
import auth_runner  # noqa: E402  (gwc keys through the real command line)
import auth_tokens  # noqa: E402

pytestmark = pytest.mark.live

LIVE_DIR = Path(__file__).resolve().parent
CASES_DIR = LIVE_DIR / "cases" / "traffic"
SPEC_TEMPLATE = LIVE_DIR / "specs" / "traffic.yaml"
STATE_TEMPLATE = LIVE_DIR / "specs" / "traffic_state.yaml"

# variant -> placeholders of specs/traffic.yaml
VARIANTS: Dict[str, Dict[str, str]] = {
    "ietf": {"__HEADERS__": "ietf", "__DEFAULT_PLAN__": "default_plan: free"},
    "legacy": {"__HEADERS__": "legacy", "__DEFAULT_PLAN__": "default_plan: free"},
    "both": {"__HEADERS__": "both", "__DEFAULT_PLAN__": "default_plan: free"},
    "none": {"__HEADERS__": "none", "__DEFAULT_PLAN__": "default_plan: free"},
    "strict": {"__HEADERS__": "ietf", "__DEFAULT_PLAN__": "# no default_plan"},
    # ietf on workers that have seen nothing yet: for what the first requests of a worker do
    "cold": {"__HEADERS__": "ietf", "__DEFAULT_PLAN__": "default_plan: free"},
}
# API-key consumers of keys.yaml and their plans (None: no plan in the file).
KEYS: Dict[str, Optional[str]] = {
    "k-pro": "pro", "k-free": "free", "k-noplan": None, "k-tiny": "tiny", "k-mine": "pro", "k-other": "pro",
    "k-weekly": "weekly", "k-ipauth": "pro",
}
BASIC_USERS = ("ann", "ben")
BASIC_PASSWORD = "correct horse battery staple"
THROTTLED = "https://gwc.dev/problems/throttled"
QUOTA_EXCEEDED = "https://gwc.dev/problems/quota-exceeded"
PROBLEM_TYPES = {"throttled": THROTTLED, "quota_exceeded": QUOTA_EXCEEDED}
NGINX_CLOCK_MS = 1.0
RL_HEADERS = ("ratelimit-policy", "ratelimit", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")

CASE_KEYS = {"name", "specs", "slow", "steps", "xfail"}
STEP_KEYS = {"send", "times", "every", "parallel", "for", "expect", "expect_by_spec", "count", "allowed", "bound", "gcra", "sleep"}
SEND_KEYS = {"method", "path", "headers", "key", "token", "basic", "client"}
EXPECT_KEYS = {"status", "problem", "retry_after", "limit", "log", "error_log"}


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    file: str
    spec: str
    name: str
    steps: Tuple[dict, ...]
    slow: bool
    xfail: Optional[str]

    def param(self):
        marks = [pytest.mark.slow] if self.slow else []
        if self.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=self.xfail))
        return pytest.param(self, id=self.id, marks=marks)


def load_cases(cases_dir: Path = CASES_DIR) -> List[Case]:
    out: List[Case] = []
    seen = set()
    for path in sorted(cases_dir.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for raw in doc["cases"]:
            where = f"{path.name}: {raw.get('name')}"
            bad = set(raw) - CASE_KEYS
            for step in raw["steps"]:
                bad |= {f"step.{k}" for k in set(step) - STEP_KEYS}
                bad |= {f"send.{k}" for k in set(step.get("send") or {}) - SEND_KEYS}
                for exp in [step.get("expect") or {}] + list((step.get("expect_by_spec") or {}).values()):
                    bad |= {f"expect.{k}" for k in set(exp) - EXPECT_KEYS}
            if bad:
                raise ValueError(f"{where}: unknown keys {sorted(bad)}")
            for spec in raw.get("specs") or doc["specs"]:
                if spec not in VARIANTS:
                    raise ValueError(f"{where}: unknown variant {spec!r}")
                cid = f"{path.stem}:{spec}:{harness._slug(raw['name'])}"
                if cid in seen:
                    raise ValueError(f"duplicate case id {cid}")
                seen.add(cid)
                out.append(Case(cid, path.name, spec, raw["name"], tuple(raw["steps"]), bool(raw.get("slow")), raw.get("xfail")))
    return out


# --------------------------------------------------------------------------- processes


class _CountingHandler(_EchoHandler):
    def _handle(self) -> None:
        with self.server.lock:  # type: ignore[attr-defined]
            tag = self.headers.get("X-Case") or ""
            self.server.seen[tag] = self.server.seen.get(tag, 0) + 1  # type: ignore[attr-defined]
        super()._handle()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class CountingBackend:
    """The echo backend, counting the requests it receives by their X-Case header."""

    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
        self.server.daemon_threads = True
        self.server.name = "A"  # type: ignore[attr-defined]
        self.server.seen = {}  # type: ignore[attr-defined]
        self.server.lock = threading.Lock()  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.port = self.server.server_address[1]

    def seen(self, tag: str) -> int:
        with self.server.lock:  # type: ignore[attr-defined]
            return self.server.seen.get(tag, 0)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def request_from(source: str, port: int, data: bytes, deadline_s: float = 10.0) -> Tuple[int, dict, bytes]:
    """support.processes.raw_request, from a chosen loopback source address (127/8 is all loopback on Linux),
    so that each case is its own client for `ip` limits."""
    with socket.create_connection(("127.0.0.1", port), timeout=deadline_s, source_address=(source, 0)) as s:
        s.sendall(data)
        chunks = []
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return parse_response(b"".join(chunks))


_next_client = [0]
_client_lock = threading.Lock()


def new_client_address() -> str:
    with _client_lock:
        _next_client[0] += 1
        n = _next_client[0]
    return f"127.1.{n // 250}.{n % 250 + 1}"


@dataclass
class Gateway:
    variant: str
    port: int
    out_dir: Path
    nginx: Nginx
    keys: Dict[str, str]
    # request id -> (case id, expected access-log fields)
    logged: Dict[str, Tuple[str, Dict[str, Any]]] = field(default_factory=dict)
    allowed_errors: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def error_log(self) -> Path:
        return self.out_dir / "logs" / "error.log"

    @property
    def access_log(self) -> Path:
        return self.out_dir / "logs" / "access.log"

    # nginx -s reload, returning once only new workers serve (their shared dicts are the old ones).
    reload = auth_runner.Gateway.reload
    # JSON access-log entries by request id, waiting (with a deadline) for the buffer to flush.
    access_entries = auth_runner.Gateway.access_entries


def render(template: Path, placeholders: Dict[str, str], dest: Path) -> Path:
    text = template.read_text(encoding="utf-8")
    for k, v in placeholders.items():
        text = text.replace(k, v)
    leftover = re.findall(r"__[A-Z_]+__", text)
    if leftover:
        raise ValueError(f"{template.name}: unreplaced placeholders {sorted(set(leftover))}")
    dest.write_text(text, encoding="utf-8")
    return dest


def write_keys(path: Path) -> Dict[str, str]:
    keys = {}
    for consumer, plan in KEYS.items():
        args = ["keys", "new", "--id", consumer, "--file", str(path)] + (["--plan", plan] if plan else [])
        proc = auth_runner.gwc_cli(*args)
        assert proc.returncode == 0, proc.stderr
        keys[consumer] = proc.stdout.rstrip("\n").splitlines()[-1]
    return keys


class Pool(harness.GatewayPool):
    """One gateway per variant, built on first use (get() is the live pool's)."""

    def __init__(self, work: Path, backend: CountingBackend, keyring: auth_tokens.KeyRing, target: str):
        self.work, self.backend, self.keyring, self.target = work, backend, keyring, target
        self.gateways: Dict[str, Gateway] = {}
        self.failures: Dict[str, str] = {}

    def _start(self, variant: str) -> Gateway:
        d = self.work / "traffic" / variant
        d.mkdir(parents=True)
        keys = write_keys(d / "keys.yaml")
        for user in BASIC_USERS:
            proc = auth_runner.gwc_cli("keys", "passwd", "--user", user, "--file", str(d / "users.yaml"), "--password-stdin",
                                       stdin=BASIC_PASSWORD + "\n")
            assert proc.returncode == 0, proc.stderr + proc.stdout
        port = free_port()
        placeholders = {**VARIANTS[variant], "__BACKEND__": str(self.backend.port), "__CLOSED_PORT__": str(closed_port()),
                        "__JWKS_INLINE__": json.dumps(self.keyring.jwks(["rsa"]))}
        spec = render(SPEC_TEMPLATE, placeholders, d / "api.yaml")
        out = d / "out"
        harness.gwc_build(spec, out, f"127.0.0.1:{port}", self.target)
        gw = Gateway(variant, port, out, Nginx(out).start([port]), keys)
        if variant != "cold":
            self._warm(gw)
        return gw

    def _warm(self, gw: Gateway) -> None:
        """Let every worker count each plan's quota once (parallel requests reach both workers), so that cases
        see the steady state; the cold variant keeps what a worker does first (cases/traffic/cold.yaml)."""
        def one(plan: str) -> int:
            token = auth_tokens.mint({"claims": {"sub": f"warm-{uuid.uuid4().hex[:8]}", "plan": plan}}, self.keyring)
            data = harness.build_request({"path": "/plan-jwt", "headers": {"Authorization": f"Bearer {token}"}})
            return request_from(new_client_address(), gw.port, data)[0]

        # Which worker accepts a connection is the kernel's choice: enough of them, at once, reach both.
        plans = [p for _ in range(4) for p in ("free", "pro", "tiny", "weekly") for _ in range(12)]
        with ThreadPoolExecutor(max_workers=24) as ex:
            statuses = list(ex.map(one, plans))
        assert set(statuses) == {200}, f"warming {gw.variant}: {statuses}"

    def close(self) -> List[str]:
        for gw in self.gateways.values():
            gw.nginx.stop()
        problems = []
        for gw in self.gateways.values():
            for line in harness.unexpected_log_lines(log_since(gw.error_log, 0), gw.allowed_errors):
                problems.append(f"{gw.variant}: {line}")
        return problems


@pytest.fixture(scope="module")
def keyring():
    return auth_tokens.KeyRing.generate()


@pytest.fixture(scope="module")
def backend():
    b = CountingBackend()
    yield b
    b.close()


@pytest.fixture(scope="module")
def target():
    rt, tried = runtime.detect(allow_docker=False)
    if rt is None:
        pytest.skip("no nginx with the Lua module: " + "; ".join(tried))
    return rt.target


@pytest.fixture(scope="module")
def pool(work_dir, backend, keyring, target):
    p = Pool(work_dir, backend, keyring, target)
    yield p
    problems = p.close()
    if problems:
        pytest.fail("unexpected lines in the nginx error logs:\n" + "\n".join(problems), pytrace=False)


# --------------------------------------------------------------------------- periods


def period_bounds(period: str, offset: int, now: float) -> Tuple[int, int]:
    """Start and end (epoch s) of the UTC quota period holding `now` (AWS semantics), computed independently
    of lua/gwc/quota_period.lua."""
    t = datetime.fromtimestamp(now, timezone.utc)
    midnight = datetime(t.year, t.month, t.day, tzinfo=timezone.utc)
    if period == "day":
        start, end = midnight, midnight + timedelta(days=1)
    elif period == "week":
        days_since_sunday = (t.weekday() + 1) % 7  # Monday is 0 in Python
        start = midnight - timedelta(days=(days_since_sunday - offset) % 7)
        end = start + timedelta(days=7)
    else:
        start = datetime(t.year, t.month, 1 + offset, tzinfo=timezone.utc)
        if start > t:
            prev = (t.replace(day=1) - timedelta(days=1))
            start = datetime(prev.year, prev.month, 1 + offset, tzinfo=timezone.utc)
        month_after = start.replace(day=1) + timedelta(days=32)
        end = datetime(month_after.year, month_after.month, 1 + offset, tzinfo=timezone.utc)
    return calendar.timegm(start.timetuple()), calendar.timegm(end.timetuple())


def _period_args(text: str) -> Tuple[str, int]:
    name, _, off = text.partition(":")
    return name, int(off or 0)


def seconds_to_period_end(text: str, now: float) -> int:
    return math.ceil(period_bounds(*_period_args(text), now)[1] - now)


def period_length(text: str, now: float) -> int:
    start, end = period_bounds(*_period_args(text), now)
    return end - start


def _policy_item(item: str, now: float) -> str:
    """`w=day` / `w=week:3` / `w=month` in a policy item become the period's length."""
    return re.sub(r"w=(day|week(?::[0-9])?|month(?::[0-9]{1,2})?)", lambda m: f"w={period_length(m.group(1), now)}", item)


def _in(value: Optional[str], want: Any, now: float, slack: int = 2) -> bool:
    """An integer header value against an int, [lo, hi], or a period name (the seconds to its end, within slack)."""
    if value is None or not re.fullmatch(r"[0-9]+", value):
        return False
    v = int(value)
    if isinstance(want, str):
        end = seconds_to_period_end(want, now)
        return end - slack <= v <= end + 1
    if isinstance(want, list):
        return want[0] <= v <= want[1]
    return v == want


# --------------------------------------------------------------------------- sending and checking


@dataclass
class Sent:
    status: int
    headers: Dict[str, str]
    body: bytes
    at: float  # time.time() when sent
    done: float  # time.time() when answered
    method: str = "GET"

    @property
    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def gcra_errors(results: List["Sent"], conf: dict) -> List[str]:
    """Every decision against a GCRA bucket run on the client's own clock.

    The gateway decided each request at some moment between its send and its
    answer, so the bucket the gateway holds (charged with what it admitted)
    lies between one run on the send times and one run on the answer times.
    A refusal is wrong when the request was within the limit even at the
    latest of those, an admission when it was over the limit even at the
    earliest. A loaded machine answers late and blurs the two; at least
    `clean` (default 0.8) of the requests must be decided either way, or the
    check says it could not conclude."""
    interval = conf["interval_ms"]
    tau = (conf["capacity"] - 1) * interval
    errs, clean = [], 0
    tat_early = tat_late = None  # the bucket as charged at the send times / at the answer times (ms)
    t0 = results[0].at if results else 0
    for i, sent in enumerate(results):
        # nginx's clock (ngx.now(), limit_req) counts whole milliseconds, cached per event-loop turn.
        sent_ms, answered_ms = (sent.at - t0) * 1000 - NGINX_CLOCK_MS, (sent.done - t0) * 1000
        # The most and the least this request can have been ahead of its turn.
        most = max(tat_late if tat_late is not None else sent_ms, sent_ms) - sent_ms
        least = max(tat_early if tat_early is not None else answered_ms, answered_ms) - answered_ms
        admitted = sent.status != 429
        if most <= tau:
            clean += 1
            if not admitted:
                errs.append(f"request {i + 1} was refused, though within the limit by at least {tau - most:.1f} ms")
        elif least > tau:
            clean += 1
            if admitted:
                errs.append(f"request {i + 1} was admitted, though over the limit by at least {least - tau:.1f} ms")
        if admitted:
            tat_early = max(tat_early if tat_early is not None else sent_ms, sent_ms) + interval
            tat_late = max(tat_late if tat_late is not None else answered_ms, answered_ms) + interval
    if results and clean < conf.get("clean", 0.8) * len(results):
        errs.append(f"inconclusive: only {clean} of {len(results)} requests were clearly within or over the limit "
                    f"(answers too slow to tell)")
    return errs


class Runner:
    def __init__(self, case: Case, gw: Gateway, keyring: auth_tokens.KeyRing, backend: CountingBackend):
        self.case, self.gw, self.keyring, self.backend = case, gw, keyring, backend
        self.tag = uuid.uuid4().hex[:12]
        self.uniq = f"u{hashlib.sha1(case.id.encode()).hexdigest()[:8]}{self.tag[:4]}"
        self.clients: Dict[int, str] = {}
        self.from_backend = 0
        self.errors: List[str] = []

    def client(self, n: int) -> str:
        if n not in self.clients:
            self.clients[n] = new_client_address()
        return self.clients[n]

    def build(self, send: dict) -> Tuple[str, bytes, str]:
        send = json.loads(json.dumps(send).replace("__UNIQ__", self.uniq))
        headers = {"X-Case": self.tag}
        headers.update(send.get("headers") or {})
        if send.get("key"):
            headers["X-API-Key"] = self.gw.keys[send["key"]]
        if send.get("basic"):
            headers["Authorization"] = "Basic " + base64.b64encode(f"{send['basic']}:{BASIC_PASSWORD}".encode()).decode()
        if send.get("token") is not None:
            headers["Authorization"] = "Bearer " + auth_tokens.mint(send["token"], self.keyring)
        req = {"method": send.get("method", "GET"), "path": send["path"], "headers": headers}
        reqline = f"{req['method']} {req['path']} HTTP/1.1"
        return self.client(int(send.get("client", 1))), harness.build_request(req), reqline

    def send_one(self, send: dict) -> Sent:
        source, data, _ = self.build(send)
        at = time.time()
        status, headers, body = request_from(source, self.gw.port, data)
        return Sent(status, headers, body, at, time.time(), send.get("method", "GET"))

    def run_step(self, n: int, step: dict) -> None:
        if "sleep" in step:
            time.sleep(float(step["sleep"]))
            return
        send = step["send"]
        expect = harness._merge(step.get("expect") or {}, (step.get("expect_by_spec") or {}).get(self.case.spec) or {})
        expect = json.loads(json.dumps(expect).replace("__UNIQ__", self.uniq))
        _, _, reqline = self.build(send)
        if expect.get("error_log"):
            self.gw.allowed_errors.append((reqline, expect["error_log"]))
        offset = log_size(self.gw.error_log)
        started = time.monotonic()
        results = self._send_all(send, step)
        wall = time.monotonic() - started
        if expect.get("error_log"):
            end = time.monotonic() + 2
            while expect["error_log"] not in log_since(self.gw.error_log, offset) and time.monotonic() < end:
                time.sleep(0.02)
        log = log_since(self.gw.error_log, offset)
        where = f"step {n + 1} ({reqline})"
        for i, sent in enumerate(results):
            for err in self.check_response(sent, expect):
                self.errors.append(f"{where}, response {i + 1}: {err}\n      got {sent.status} {sent.headers} {sent.body[:300]!r}")
        statuses = [s.status for s in results]
        if "count" in step:
            want = {int(k): v for k, v in step["count"].items()}
            got = {s: statuses.count(s) for s in set(statuses)}
            if got != want:
                gaps = [round((b.at - a.at) * 1000, 1) for a, b in zip(results, results[1:])]
                self.errors.append(f"{where}: statuses {got}, expected {want} (in order: {statuses}; ms between sends: {gaps})")
        admitted = sum(1 for s in statuses if s != 429)
        if "allowed" in step:
            lo, hi = step["allowed"].get("min", 0), step["allowed"].get("max", len(statuses))
            if not lo <= admitted <= hi:
                self.errors.append(f"{where}: {admitted} admitted, expected {lo}..{hi} (in order: {statuses})")
        if "gcra" in step:
            self.errors += [f"{where}: {e}" for e in gcra_errors(results, step["gcra"])]
        if "bound" in step:
            limit = step["bound"]["rate"] * wall + step["bound"]["burst"]
            if admitted > limit:
                self.errors.append(f"{where}: {admitted} admitted in {wall:.3f} s, more than rate x W + burst = {limit:.1f}")
        allowed = [(reqline, expect["error_log"])] if expect.get("error_log") else []
        for line in harness.unexpected_log_lines(log, allowed):
            self.errors.append(f"{where}: error log: {line}")

    def _send_all(self, send: dict, step: dict) -> List[Sent]:
        if "for" in step:
            out, end = [], time.monotonic() + float(step["for"])
            while time.monotonic() < end:
                out.append(self.send_one(send))
            return out
        times = int(step.get("times", 1))
        if step.get("parallel"):
            with ThreadPoolExecutor(max_workers=times) as ex:
                return list(ex.map(lambda _: self.send_one(send), range(times)))
        every = step.get("every")
        if not every:
            return [self.send_one(send) for _ in range(times)]
        # Paced sends leave on an absolute schedule, each from its own thread,
        # so that one slow answer does not bunch up the requests after it.
        futures = []
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as ex:
            for i in range(times):
                delay = start + i * float(every) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                futures.append(ex.submit(self.send_one, send))
        return [f.result() for f in futures]

    def check_response(self, sent: Sent, expect: Dict[str, Any]) -> List[str]:
        errs: List[str] = []
        h = sent.headers
        rid = h.get("x-request-id")
        if not rid or not harness.REQUEST_ID.match(rid):
            errs.append(f"X-Request-Id missing or malformed: {rid!r}")
        from_backend = h.get("x-backend") is not None
        if from_backend:
            self.from_backend += 1
        if "status" in expect and sent.status != expect["status"]:
            errs.append(f"status {sent.status}, expected {expect['status']}")
        if sent.status == 429 and from_backend:
            errs.append("a refused request reached the upstream")
        if sent.method == "HEAD" and sent.body:
            errs.append(f"a HEAD response has a body: {sent.body[:100]!r}")
        if not from_backend and sent.status >= 400:
            errs += self.problem_errors(sent, rid, expect.get("problem") or {})
        if "retry_after" in expect:
            want, got = expect["retry_after"], h.get("retry-after")
            if want is None:
                if got is not None:
                    errs.append(f"Retry-After {got!r}, expected none")
            elif not _in(got, want, sent.at):
                errs.append(f"Retry-After {got!r}, expected {want!r} (whole seconds)")
        if "limit" in expect:
            errs += self.limit_errors(sent, expect["limit"])
        if expect.get("log") and rid:
            self.gw.logged[rid] = (self.case.id, expect["log"])
        return errs

    @staticmethod
    def problem_errors(sent: Sent, rid: Optional[str], subset: Dict[str, Any]) -> List[str]:
        errs = []
        if sent.headers.get("content-type") != harness.PROBLEM_TYPE:
            return [f"a gateway error must be {harness.PROBLEM_TYPE}, got {sent.headers.get('content-type')!r}"]
        if sent.headers.get("cache-control") != "no-store":
            errs.append(f"Cache-Control {sent.headers.get('cache-control')!r}, expected no-store")
        if sent.status == 429 and not re.fullmatch(r"[1-9][0-9]*", sent.headers.get("retry-after") or ""):
            errs.append(f"a 429 needs Retry-After in whole seconds, got {sent.headers.get('retry-after')!r}")
        if sent.method == "HEAD":
            return errs
        body = sent.json
        if not isinstance(body, dict):
            return errs + [f"problem body is not a JSON object: {sent.body[:200]!r}"]
        if body.get("status") != sent.status:
            errs.append(f"problem status {body.get('status')!r} != {sent.status}")
        if body.get("title") != harness.TITLES.get(sent.status):
            errs.append(f"problem title {body.get('title')!r}")
        if body.get("request_id") != rid:
            errs.append(f"problem request_id {body.get('request_id')!r} != {rid!r}")
        if body.get("type") not in ("about:blank", THROTTLED, QUOTA_EXCEEDED):
            errs.append(f"problem type {body.get('type')!r}")
        errs += [f"problem: {e}" for e in harness._subset(subset, body)]
        return errs

    def limit_errors(self, sent: Sent, want: Optional[dict]) -> List[str]:
        h, mode = sent.headers, VARIANTS[self.case.spec]["__HEADERS__"]
        present = {k: h[k] for k in RL_HEADERS if k in h}
        if want is None or mode == "none":
            return [f"rate-limit headers {present}, expected none"] if present else []
        errs = []
        policy = [_policy_item(p, sent.at) for p in want["policy"]]
        q = next((re.search(r";q=([0-9]+)", p).group(1) for p in policy if p.startswith(f'"{want["name"]}";')), None)
        if q is None:
            raise ValueError(f"{self.case.id}: the deciding limit {want['name']!r} is not in its policy list")
        expected_names = set()
        if mode in ("ietf", "both"):
            expected_names |= {"ratelimit-policy", "ratelimit"}
            if h.get("ratelimit-policy") != ", ".join(policy):
                errs.append(f"RateLimit-Policy {h.get('ratelimit-policy')!r}, expected {', '.join(policy)!r}")
            m = re.fullmatch(r'"([^"]+)";r=([0-9]+);t=([0-9]+)', h.get("ratelimit") or "")
            if not m or m.group(1) != want["name"] or int(m.group(2)) != want["r"] or not _in(m.group(3), want["t"], sent.at):
                errs.append(f"RateLimit {h.get('ratelimit')!r}, expected \"{want['name']}\";r={want['r']};t={want['t']}")
        if mode in ("legacy", "both"):
            expected_names |= {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"}
            if h.get("x-ratelimit-limit") != q:
                errs.append(f"X-RateLimit-Limit {h.get('x-ratelimit-limit')!r}, expected {q!r}")
            if h.get("x-ratelimit-remaining") != str(want["r"]):
                errs.append(f"X-RateLimit-Remaining {h.get('x-ratelimit-remaining')!r}, expected {want['r']}")
            if not _in(h.get("x-ratelimit-reset"), want["t"], sent.at):
                errs.append(f"X-RateLimit-Reset {h.get('x-ratelimit-reset')!r}, expected {want['t']!r}")
        extra = set(present) - expected_names
        if extra:
            errs.append(f"headers of another mode: {sorted(extra)}")
        return errs

    def finish(self) -> None:
        # Give the backend's threads a moment to record the last requests.
        end = time.monotonic() + 2
        while self.backend.seen(self.tag) < self.from_backend and time.monotonic() < end:
            time.sleep(0.02)
        seen = self.backend.seen(self.tag)
        if seen != self.from_backend:
            self.errors.append(f"the upstream received {seen} requests of this case, but {self.from_backend} responses came from it")
        if self.errors:
            raise AssertionError(f"{self.case.file}: {self.case.name} [{self.case.spec}]\n  " + "\n  ".join(self.errors))


CASES = load_cases()


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_case(case: Case, pool: Pool, keyring, backend) -> None:
    gw = pool.get(case.spec)
    runner = Runner(case, gw, keyring, backend)
    for n, step in enumerate(case.steps):
        runner.run_step(n, step)
    runner.finish()


@pytest.mark.parametrize("variant", sorted(set(VARIANTS) - {"cold"}))
def test_access_log(variant: str, pool: Pool) -> None:
    """The JSON access log of every checked request names its reason and deciding limit (runs after the cases)."""
    gw = pool.gateways.get(variant)
    if gw is None or not gw.logged:
        pytest.skip(f"no case with log expectations ran on {variant}")
    found = gw.access_entries(set(gw.logged))
    errs = []
    for rid, (case_id, fields) in gw.logged.items():
        entry = found.get(rid)
        if entry is None:
            errs.append(f"{case_id}: request {rid} is not in the access log")
            continue
        for k, v in fields.items():
            if str(entry.get(k)) != str(v):
                errs.append(f"{case_id}: access log {k}={entry.get(k)!r}, expected {v!r} (entry {entry})")
    assert not errs, "\n".join(errs)


def test_every_variant_has_cases() -> None:
    assert {c.spec for c in CASES} == set(VARIANTS)


# --------------------------------------------------------------------------- generated config


def _locations(out_dir: Path) -> Dict[str, str]:
    """operationId -> the text of its generated location block."""
    conf = (out_dir / "conf.d" / "gateway.conf").read_text()
    blocks = dict(re.findall(r"\n\s*location = gw:([A-Za-z0-9_]+) \{\n(.*?)\n    \}", conf, re.S))
    routes = json.loads((out_dir / "lua" / "gwc" / "data" / "routes.json").read_text())
    return {op["id"]: blocks[op["loc"]] for op in routes["operations"]}


NATIVE_IN_NONE = {"perIp", "perRoute", "everyone", "multi", "down", "paceIp", "burstIp", "mocked", "routeItemGet",
                  "routeItemPost", "hourlyExact"}
NATIVE_AND_LUA_IN_NONE = {"ipAuth", "validated"}  # limit_req for the ip limit, Lua for authentication or validation


@pytest.mark.parametrize("variant", ["none", "ietf"])
def test_native_limit_req_where_exact(variant: str, pool: Pool) -> None:
    """headers: none puts node-scope ip/route/global limits in nginx's limit_req, with no Lua where nothing
    else needs it; every other mode keeps them in Lua for the headers."""
    gw = pool.get(variant)
    locations = _locations(gw.out_dir)
    conf = (gw.out_dir / "conf.d" / "gateway.conf").read_text()
    errs = []
    for op, block in sorted(locations.items()):
        native = variant == "none" and op in NATIVE_IN_NONE | NATIVE_AND_LUA_IN_NONE
        lua = not (variant == "none" and op in NATIVE_IN_NONE) and op not in ("unlimited", "sharedDelete")
        if native != ("limit_req zone=" in block):
            errs.append(f"{op}: expected {'' if native else 'no '}limit_req:\n{block}")
        if lua != ("access_by_lua" in block):
            errs.append(f"{op}: expected {'' if lua else 'no '}access_by_lua:\n{block}")
    if variant == "none":
        m = re.search(r"limit_req zone=\S+ burst=(\d+) nodelay;", locations["perIp"])
        if not m or m.group(1) != "2":
            errs.append(f"perIp (burst 3) needs limit_req burst=2 nodelay: {locations['perIp']}")
        if "limit_req_status 429;" not in conf:
            errs.append("limit_req_status 429 missing")
        if "RateLimit" in conf:
            errs.append("headers: none must not add RateLimit headers")
    elif "limit_req" in conf:
        errs.append(f"{variant}: limit_req in the config, though the headers need the counts")
    assert not errs, "\n".join(errs)


# --------------------------------------------------------------------------- state


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ietf", "none"])
def test_counters_survive_reload_and_unchanged_limits_survive_rebuild(mode: str, work_dir: Path, backend: CountingBackend,
                                                                     target: str) -> None:
    d = work_dir / f"traffic-state-{mode}"
    d.mkdir()
    port = free_port()
    spec = d / "api.yaml"
    out = d / "out"

    def build(changed_rate: str, plan_rate: str = "3/min", plan_burst: int = 2, quota: int = 3) -> None:
        render(STATE_TEMPLATE, {"__HEADERS__": mode, "__BACKEND__": str(backend.port), "__CHANGED_RATE__": changed_rate,
                                "__PLAN_RATE__": plan_rate, "__PLAN_BURST__": str(plan_burst), "__QUOTA__": str(quota)}, spec)
        harness.gwc_build(spec, out, f"127.0.0.1:{port}", target)

    proc = auth_runner.gwc_cli("keys", "new", "--id", "goldie", "--plan", "gold", "--file", str(d / "keys.yaml"))
    assert proc.returncode == 0, proc.stderr
    gold = {"X-API-Key": proc.stdout.rstrip("\n").splitlines()[-1]}

    client = new_client_address()
    tenant = uuid.uuid4().hex

    def get(path: str, headers: Optional[dict] = None) -> Tuple[int, dict]:
        data = harness.build_request({"path": path, "headers": headers or {}})
        status, h, _ = request_from(client, port, data)
        return status, h

    def statuses(path: str, n: int, headers: Optional[dict] = None) -> List[int]:
        return [get(path, headers)[0] for _ in range(n)]

    build("3/min")
    gw = Gateway(mode, port, out, Nginx(out).start([port]), {})
    tenant_headers = {"X-Tenant": tenant}
    try:
        assert statuses("/kept", 3) == [200, 200, 429]
        assert statuses("/changed", 3) == [200, 200, 429]
        assert statuses("/tenant", 3, tenant_headers) == [200, 200, 429]
        assert statuses("/planned", 3, gold) == [200, 200, 429]  # the plan's rate refuses; the quota has used 2

        gw.reload()
        assert statuses("/kept", 1) == [429], "an exhausted bucket is refilled by nginx -s reload"
        assert statuses("/changed", 1) == [429], "an exhausted bucket is refilled by nginx -s reload"
        assert statuses("/tenant", 1, tenant_headers) == [429], "an exhausted bucket is refilled by nginx -s reload"

        build("6/min", quota=4)  # /changed's limit and the gold quota change; /kept's, /tenant's and the gold rate do not
        gw.reload()
        assert statuses("/kept", 1) == [429], "a rebuild reset the counters of a limit it did not change"
        assert statuses("/tenant", 1, tenant_headers) == [429], "a rebuild reset the counters of a limit it did not change"
        assert statuses("/planned", 1, gold) == [429], "a rebuild reset the counters of a plan rate it did not change"
        status, h = get("/changed")
        assert status == 200, "a changed limit starts afresh"
        if mode == "ietf":
            assert h.get("ratelimit-policy") == '"changed";q=6;w=60'
            assert h.get("ratelimit") == '"changed";r=1;t=10', h

        build("6/min", plan_rate="60/min", plan_burst=10, quota=5)  # a fresh plan bucket; the quota keeps its count
        gw.reload()
        status, h = get("/planned", gold)
        assert status == 200, "a changed plan rate starts afresh"
        if mode == "ietf":
            assert (h.get("ratelimit-policy") or "").startswith('"gold";q=60;w=60, "gold-quota";q=5;w='), h
            assert re.fullmatch(r'"gold-quota";r=2;t=[0-9]+', h.get("ratelimit") or ""), f"the quota lost its count: {h}"
    finally:
        gw.nginx.stop()
    bad = harness.severe_lines(log_since(gw.error_log, 0))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("variant", ["ietf", "strict"])
def test_key_added_after_deploy_with_an_undeclared_plan(variant: str, pool: Pool) -> None:
    """A key file edited on a deployed gateway may name a plan the build never saw: default_plan, or 403."""
    gw = pool.get(variant)
    proc = auth_runner.gwc_cli("keys", "new", "--id", "late", "--plan", "gold", "--file", str(gw.out_dir / "keys.json"))
    assert proc.returncode == 0, proc.stderr
    key = proc.stdout.rstrip("\n").splitlines()[-1]
    offset = log_size(gw.error_log)
    gw.reload()
    data = harness.build_request({"path": "/plan-key", "headers": {"X-API-Key": key}})
    status, headers, body = request_from(new_client_address(), gw.port, data)
    if variant == "strict":
        assert status == 403, (status, headers, body)
        assert json.loads(body)["detail"] == "The consumer's usage plan is not offered by this API."
        assert "ratelimit" not in headers
    else:
        assert status == 200, (status, headers, body)
        assert headers.get("ratelimit-policy") == '"free";q=2;w=1, "free-quota";q=100;w=86400'
    bad = harness.severe_lines(log_since(gw.error_log, offset))
    assert not bad, "\n".join(bad)
