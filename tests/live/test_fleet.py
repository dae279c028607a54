"""Fleet-scope limits live: real nginx gateways built from one spec share a real Redis and enforce one limit.

- Cases as data (a flood and a client paced at 90 % of the rate), alternating between two gateways, on a
  standalone Redis (AUTH from the environment, database 3) and on a three-master Cluster: allowed <= rate*W + burst,
  the paced client never refused, keep-alive pooling (connections opened per run).
- Cluster: the slots of the keys in use migrate (ASK, then MOVED) during traffic with the script caches flushed;
  a master stops under load and comes back.
- AUTH and SELECT, no password in the output, no start without the variable, a reload, rediss:// with AUTH.
- A quota shared by both gateways; a used-up quota and an empty bucket kept across an nginx restart, stored as the
  design's hash and TAT.
- Redis paused (slow: every call ends at `timeout`) and stopped under load, with on_error allow (no 5xx, node
  limits still apply) and deny (503 limit_unavailable); requests within the client deadline; a handful of error-log
  lines; limiting resumes by itself.

Every request has a client deadline; every wait has one too. No timing is asserted, only counts and statuses.
"""
from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest
import yaml

from harness import Result, gwc_build, severe_lines
from support.processes import Nginx, free_port, log_since, parse_response
from support.redis_servers import Connection, RedisCluster, RedisReplyError, RedisServer, key_slot

pytestmark = [pytest.mark.live, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                                 reason="redis-server and redis-cli are not installed")]

SPEC = Path(__file__).resolve().parent / "specs" / "fleet.yaml"
PASSWORD_ENV = "GWC_FLEET_REDIS_PASSWORD"
PASSWORD = "fleet-secret-7c41"
DATABASE = 3
TIMEOUT_MS = 200
# A request may wait one Redis timeout (or a connect and a read); far more than that is a hang.
CLIENT_DEADLINE_S = 2.0

# The /shared operation's limit, as written in specs/fleet.yaml.
RATE_PER_S = 10
BURST = 5
# Plan `small` (quota 5 a day) and plan `roomy` (a large quota, for counting under a reshard).
QUOTA = 5
CONSUMERS = {"alice": "small", "bob": "small", "erin": "roomy"}

THROTTLED = "https://gwc.dev/problems/throttled"
QUOTA_EXCEEDED = "https://gwc.dev/problems/quota-exceeded"
PROBLEM = "application/problem+json"


def api_key(consumer: str) -> str:
    return f"fleet-key-{consumer}-5d1e0b"


# --------------------------------------------------------------------------- requests


@dataclass
class Response(Result):
    """A response with which gateway answered it and when (time.monotonic()) it was sent and answered."""

    gateway: int = 0
    started: float = 0.0
    ended: float = 0.0
    error: Optional[str] = None


def send(port: int, path: str, headers: Optional[Dict[str, str]] = None, gateway: int = 0,
         deadline_s: float = CLIENT_DEADLINE_S) -> Response:
    """One GET on a fresh connection; a transport failure or a missed deadline is a Response with `error`."""
    lines = [f"GET {path} HTTP/1.1", "Host: gw.test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    started = time.monotonic()
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=deadline_s) as s:
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            end = started + deadline_s
            while True:
                s.settimeout(max(0.01, end - time.monotonic()))
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        status, resp_headers, body = parse_response(data)
        return Response(status, resp_headers, body, "", gateway, started, time.monotonic())
    except (OSError, ValueError, IndexError) as exc:
        return Response(0, {}, b"", "", gateway, started, time.monotonic(), error=f"{type(exc).__name__}: {exc}")


def refused_problem_errors(resp: Response, want_type: str, want_status: int = 429) -> List[str]:
    """What is wrong with a refusal: not problem+json, wrong type, no whole-second Retry-After, reached upstream."""
    errs = []
    body = resp.json or {}
    if resp.status != want_status:
        errs.append(f"status {resp.status}")
    if resp.headers.get("content-type") != PROBLEM:
        errs.append(f"content-type {resp.headers.get('content-type')!r}")
    if body.get("type") != want_type or body.get("status") != want_status:
        errs.append(f"problem {body!r}")
    if not re.fullmatch(r"[1-9][0-9]*", resp.headers.get("retry-after", "")):
        errs.append(f"Retry-After {resp.headers.get('retry-after')!r}")
    if "x-backend" in resp.headers:
        errs.append("the refused request reached the upstream")
    return errs


# --------------------------------------------------------------------------- gateways


@contextlib.contextmanager
def environment(values: Dict[str, str]) -> Iterator[None]:
    """os.environ with `values` while nginx is spawned: its master reads `env NAME;` variables at start."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class Gateway:
    out_dir: Path
    port: int
    env: Dict[str, str]
    nginx: Optional[Nginx] = None

    def start(self) -> "Gateway":
        with environment(self.env):
            self.nginx = Nginx(self.out_dir).start([self.port])
        return self

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def error_log(self) -> Path:
        return self.out_dir / "logs" / "error.log"

    def log_text(self, offset: int = 0) -> str:
        return log_since(self.error_log, offset)

    def access_records(self) -> List[dict]:
        try:
            text = (self.out_dir / "logs" / "access.log").read_text(errors="replace")
        except OSError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def limit_id(self, op_id: str) -> str:
        data = json.loads((self.out_dir / "lua" / "gwc" / "data" / "access.json").read_text())
        return data["operations"][op_id]["limits"][0]["id"]

    def get(self, path: str, headers: Optional[Dict[str, str]] = None, index: int = 0) -> Response:
        return send(self.port, path, headers, gateway=index)


def access_record(gw: Gateway, resp: Response, deadline_s: float = 5.0) -> dict:
    """The access-log record of a response, by its X-Request-Id (the log is buffered, flush=1s)."""
    rid = resp.headers.get("x-request-id")
    end = time.monotonic() + deadline_s
    while True:
        found = [r for r in gw.access_records() if r.get("request_id") == rid]
        if found:
            return found[0]
        if time.monotonic() > end:
            raise AssertionError(f"no access-log record for request {rid} after {deadline_s}s")
        time.sleep(0.2)


def redis_setting(redis: str, on_error: str, password: bool) -> str:
    body = f"{redis}, timeout: {TIMEOUT_MS}ms, pool: 8, on_error: {on_error}"
    return body + (f", password_env: {PASSWORD_ENV}" if password else "")


def build_gateways(work: Path, name: str, backend: int, redis: str, count: int = 2, on_error: str = "allow",
                   password: bool = False, nginx: Optional[Dict[str, str]] = None) -> List[Gateway]:
    """`count` gateways from one rendering of specs/fleet.yaml, each built into its own directory and port."""
    spec_dir = work / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    consumers = [{"id": c, "key_sha256": hashlib.sha256(api_key(c).encode()).hexdigest(), "plan": plan}
                 for c, plan in CONSUMERS.items()]
    (spec_dir / "keys.yaml").write_text(yaml.safe_dump({"consumers": consumers}))
    text = SPEC.read_text().replace("__BACKEND__", str(backend))
    text = text.replace("__REDIS__", redis_setting(redis, on_error, password))
    if nginx:
        text = text.replace("\nx-gateway:\n", "\nx-gateway:\n  nginx: " + json.dumps(nginx) + "\n", 1)
    spec_file = spec_dir / "fleet.yaml"
    spec_file.write_text(text)
    env = {PASSWORD_ENV: PASSWORD} if password else {}
    gateways = []
    for i in range(count):
        port = free_port()
        out = spec_dir / f"gw{i}"
        gwc_build(spec_file, out, f"127.0.0.1:{port}", "nginx-lua")
        gateways.append(Gateway(out, port, env))
    return gateways


@contextlib.contextmanager
def running(gateways: List[Gateway]) -> Iterator[List[Gateway]]:
    try:
        for gw in gateways:
            gw.start()
        yield gateways
    finally:
        for gw in gateways:
            gw.stop()


def assert_clean_logs(gateways: List[Gateway], allow: Callable[[str], bool] = lambda line: False) -> None:
    bad = [f"{gw.out_dir.name}: {line}" for gw in gateways for line in severe_lines(gw.log_text()) if not allow(line)]
    assert not bad, "unexpected error-log lines:\n" + "\n".join(bad[:20])


@dataclass
class Fleet:
    gateways: List[Gateway]
    redis_call: Callable[..., object]      # a command on the node that holds `key` (first argument)
    kind: str
    keys: Callable[[], List[str]]
    servers: List[RedisServer]

    def connections_received(self) -> int:
        """Connections the Redis servers have accepted since they started."""
        total = 0
        for server in self.servers:
            info = server.call("INFO", "stats")
            total += int(re.search(r"total_connections_received:([0-9]+)", info).group(1))
        return total


@pytest.fixture(scope="module")
def standalone_redis():
    with RedisServer(password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def standalone(work_dir, backends, standalone_redis):
    gateways = build_gateways(work_dir, "fleet-standalone", backends["A"],
                              f"url: 'redis://127.0.0.1:{standalone_redis.port}/{DATABASE}'", password=True)

    def call(key, *args):
        with standalone_redis.connect() as conn:
            conn.call("SELECT", DATABASE)
            return conn.call(*args)

    def keys():
        return call("", "KEYS", "gwc:*")

    with running(gateways):
        yield Fleet(gateways, call, "standalone", keys, [standalone_redis])
    assert_clean_logs(gateways)


@pytest.fixture(scope="module")
def cluster_servers():
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster(work_dir, backends, cluster_servers):
    seeds = ", ".join(f"'{url}'" for url in cluster_servers.seeds)
    gateways = build_gateways(work_dir, "fleet-cluster", backends["A"], f"cluster: [{seeds}]")

    def call(key, *args):
        return cluster_servers.call_for_key(key, *args)

    def keys():
        return [k for node in cluster_servers.nodes for k in node.call("KEYS", "gwc:*")]

    with running(gateways):
        yield Fleet(gateways, call, "cluster", keys, list(cluster_servers.nodes))
    assert_clean_logs(gateways)


@pytest.fixture(params=["standalone", "cluster"])
def fleet(request) -> Fleet:
    return request.getfixturevalue(request.param)


# --------------------------------------------------------------------------- traffic


def alternate(gateways: List[Gateway], path: str, headers: Dict[str, str], count: Optional[int] = None,
              interval_s: float = 0.0, duration_s: Optional[float] = None,
              stop: Optional[threading.Event] = None) -> List[Response]:
    """Requests alternating between the gateways, started on a fixed schedule (i * interval_s from the first),
    until `count` requests, `duration_s` or `stop`."""
    out: List[Response] = []
    t0 = time.monotonic()
    i = 0
    while (count is None or i < count) and (duration_s is None or time.monotonic() - t0 < duration_s) \
            and not (stop is not None and stop.is_set()):
        due = t0 + i * interval_s
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        gw_index = i % len(gateways)
        out.append(gateways[gw_index].get(path, headers, index=gw_index))
        i += 1
    return out


@contextlib.contextmanager
def traffic(loops: Dict[str, tuple], deadline_s: float = 60.0) -> Iterator[Dict[str, List[Response]]]:
    """Client loops, each (gateways, path, headers, interval_s), in threads while the body runs; the dict it
    yields holds each loop's responses once the body has ended."""
    stop = threading.Event()
    results: Dict[str, List[Response]] = {}

    def run(label, gateways, path, headers, interval_s):
        results[label] = alternate(gateways, path, headers, interval_s=interval_s, stop=stop, duration_s=deadline_s)

    threads = [threading.Thread(target=run, args=(label, *loop)) for label, loop in loops.items()]
    for thread in threads:
        thread.start()
    try:
        yield results
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=deadline_s + 10)


def window_bound(responses: List[Response], rate_per_s: float = RATE_PER_S, burst: int = BURST) -> float:
    """rate * W + burst over the window from the first request's start to the last one's end: it contains the
    moment Redis decided each of them, so no correct limiter can allow more."""
    window = responses[-1].ended - responses[0].started
    return rate_per_s * window + max(burst, 1)


def excess_windows(responses: List[Response], rate_per_s: float = RATE_PER_S, burst: int = BURST) -> List[str]:
    """Every window between two allowed responses (from the first one's start to the last one's end) that holds
    more allowed requests than rate * W + burst."""
    allowed = sorted((r for r in responses if r.status == 200), key=lambda r: r.started)
    out = []
    for i, first in enumerate(allowed):
        for j in range(i, len(allowed)):
            window = allowed[j].ended - first.started
            if j - i + 1 > rate_per_s * window + max(burst, 1):
                out.append(f"{j - i + 1} allowed within {window:.3f}s (bound {rate_per_s * window + burst:.1f})")
    return out


def by_status(responses: List[Response]) -> Dict[int, int]:
    out: Dict[int, int] = {}
    for r in responses:
        out[r.status] = out.get(r.status, 0) + 1
    return out


def fresh_client(label: str) -> Dict[str, str]:
    return {"X-Client": f"{label}-{time.monotonic_ns()}"}


# Request sequences with their pacing, and what must hold; run on both gateways alternately.
SCENARIOS = [
    pytest.param({"interval_s": 0.004, "duration_s": 3.0, "expect": "bounded"}, id="flood-3s"),
    pytest.param({"interval_s": 1 / (0.9 * RATE_PER_S), "duration_s": 3.0, "expect": "never_refused"},
                 id="paced-90pct"),
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_two_gateways_enforce_one_limit(fleet: Fleet, scenario) -> None:
    headers = fresh_client(f"{fleet.kind}-scenario")
    connections = fleet.connections_received()
    responses = alternate(fleet.gateways, "/shared", headers, interval_s=scenario["interval_s"],
                          duration_s=scenario["duration_s"])
    # Keep-alive pooling: a worker opens a connection to a node once, not once per request
    # (a few more as the test's own INFO connections and a key's slot changing node).
    opened = fleet.connections_received() - connections
    workers = sum(len(gw.nginx.worker_pids()) for gw in fleet.gateways)
    assert opened <= workers * len(fleet.servers) + 2 * len(fleet.servers), (opened, len(responses))
    failed = [r for r in responses if r.error or r.status not in (200, 429)]
    assert not failed, f"{len(failed)} requests failed, first: {failed[0]}"
    allowed = [r for r in responses if r.status == 200]
    print(f"{fleet.kind} {scenario}: {by_status(responses)}, bound {window_bound(responses):.1f}, "
          f"{opened} Redis connections opened")
    if scenario["expect"] == "never_refused":
        assert len(allowed) == len(responses), f"a client at 90 % of the rate was refused: {by_status(responses)}"
        return
    bound = window_bound(responses)
    assert len(allowed) <= bound, f"{len(allowed)} allowed > rate*W+burst = {bound:.1f} ({by_status(responses)})"
    assert not excess_windows(responses), excess_windows(responses)[:5]
    # Close to the bound, too: one shared bucket, not a stricter limiter.
    assert len(allowed) >= 0.8 * (bound - BURST), f"only {len(allowed)} allowed of a bound of {bound:.1f}"
    for index in range(len(fleet.gateways)):
        statuses = {r.status for r in responses if r.gateway == index}
        assert statuses == {200, 429}, f"gateway {index} saw {statuses}: the bucket is not shared"
    refused = next(r for r in responses if r.status == 429)
    assert not refused_problem_errors(refused, THROTTLED), refused_problem_errors(refused, THROTTLED)
    assert refused.headers.get("ratelimit", "").startswith('"per-client";r=0;'), refused.headers
    assert refused.headers.get("ratelimit-policy") == f'"per-client";q={RATE_PER_S};w=1', refused.headers
    record = access_record(fleet.gateways[refused.gateway], refused)
    assert (record["reason"], record["limit"]) == ("throttled", "per-client"), record
    assert all("x-backend" in r.headers for r in allowed)


def test_auth_from_the_environment_and_database_selection(standalone: Fleet, standalone_redis: RedisServer) -> None:
    headers = fresh_client("db")
    statuses = [r.status for r in alternate(standalone.gateways, "/shared", headers, count=4)]
    assert statuses == [200] * 4
    value = headers["X-Client"]
    limit_id = standalone.gateways[0].limit_id("shared")
    key = f"gwc:{{h:{hashlib.md5(value.encode()).hexdigest()}}}:r:{limit_id}"
    assert standalone.redis_call(key, "EXISTS", key) == 1, f"{key} not in db {DATABASE}: {standalone.keys()[:10]}"
    with standalone_redis.connect() as conn:
        assert conn.call("KEYS", "gwc:*") == [], "keys landed in db 0"
    # The server really demands the password the gateways took from their environment.
    with Connection(standalone_redis.port) as anonymous:
        with pytest.raises(RedisReplyError, match="NOAUTH"):
            anonymous.call("GET", key)
    for gw in standalone.gateways:
        for path in gw.out_dir.rglob("*"):
            if path.is_file() and path.suffix in (".conf", ".json", ".lua"):
                assert PASSWORD not in path.read_text(errors="replace"), f"the password is in {path}"


def test_a_gateway_without_the_password_variable_does_not_start(work_dir, backends, standalone_redis) -> None:
    gw, = build_gateways(work_dir, "fleet-no-password", backends["A"],
                         f"url: 'redis://127.0.0.1:{standalone_redis.port}/{DATABASE}'", count=1, password=True)
    gw.env = {}
    with environment({PASSWORD_ENV: ""}):
        with pytest.raises(RuntimeError, match=f"environment variable {PASSWORD_ENV} is not set"):
            gw.start()


def test_a_reload_keeps_the_redis_client_and_its_counters(standalone: Fleet) -> None:
    """`nginx -s reload` runs init again in the master: the password still comes from its environment."""
    gw = standalone.gateways[0]
    client = fresh_client("reload")
    assert [gw.get("/slow", client).status for _ in range(3)] == [200, 200, 429]
    old_workers = set(gw.nginx.worker_pids())
    gw.nginx.proc.send_signal(signal.SIGHUP)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        workers = set(gw.nginx.worker_pids())
        if workers and not workers & old_workers:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"no new workers within 10s of SIGHUP: {gw.log_text()[-1500:]}")
    after = gw.get("/slow", client)
    assert not refused_problem_errors(after, THROTTLED), refused_problem_errors(after, THROTTLED)
    assert gw.get("/slow", fresh_client("reload")).status == 200


def test_two_gateways_share_a_limit_over_tls(work_dir, backends) -> None:
    """rediss:// verified against nginx.ca_bundle, the certificate's DNS name given as server_name."""
    with RedisServer(tls=True, password=PASSWORD) as server:
        # nginx workers (nobody, when the tests run as root) load lua_ssl_trusted_certificate: not from a 0700 dir.
        ca_bundle = work_dir / "fleet-tls-ca.pem"
        shutil.copyfile(server.ca_path, ca_bundle)
        os.chmod(ca_bundle, 0o644)
        gateways = build_gateways(work_dir, "fleet-tls", backends["A"],
                                  f"url: 'rediss://127.0.0.1:{server.port}', server_name: localhost",
                                  password=True, nginx={"ca_bundle": str(ca_bundle)})
        with running(gateways):
            responses = alternate(gateways, "/shared", fresh_client("tls"), interval_s=0.004, duration_s=1.5)
        assert {r.status for r in responses} == {200, 429}, (by_status(responses), responses[0].error)
        allowed = sum(r.status == 200 for r in responses)
        assert allowed <= window_bound(responses) and not excess_windows(responses), excess_windows(responses)[:5]
        assert {r.gateway for r in responses if r.status == 429} == {0, 1}
        assert server.call("KEYS", "gwc:*"), "nothing was written over TLS"
        assert_clean_logs(gateways)


def quota_key(consumer: str, plan: str, now: Optional[float] = None) -> tuple:
    """(key, period start, period end) of a day quota, as the design names them."""
    today = dt.datetime.fromtimestamp(now or time.time(), dt.timezone.utc).date()
    start = calendar.timegm(today.timetuple())
    return f"gwc:{{c:{consumer}}}:q:{plan}:{start}", start, start + 86400


def test_quota_is_shared_by_both_gateways(fleet: Fleet) -> None:
    key = {"X-API-Key": api_key("alice")}
    responses = alternate(fleet.gateways, "/quota", key, count=QUOTA)
    assert [r.status for r in responses] == [200] * QUOTA
    # Each gateway's answer counts the other's requests too.
    remaining = [re.match(r'"small-quota";r=([0-9]+);', r.headers.get("ratelimit", "")) for r in responses]
    assert [int(m.group(1)) if m else None for m in remaining] == list(range(QUOTA - 1, -1, -1)), \
        [r.headers.get("ratelimit") for r in responses]
    _, _, end = quota_key("alice", "small")
    for index, gw in enumerate(fleet.gateways):
        over = gw.get("/quota", key, index=index)
        assert not refused_problem_errors(over, QUOTA_EXCEEDED), (index, over)
        # Retry-After is the time to the end of the UTC day.
        assert abs(int(over.headers["retry-after"]) - (end - time.time())) < 5, over.headers
        assert over.headers.get("ratelimit", "").startswith('"small-quota";r=0;'), over.headers
        record = access_record(gw, over)
        assert (record["reason"], record["limit"], record["consumer"]) == ("quota_exceeded", "small-quota", "alice"), \
            record


def test_counters_survive_an_nginx_restart_and_are_stored_as_designed(standalone: Fleet) -> None:
    """A used-up quota and an empty bucket (6/min, burst 2: ten seconds a token) stay so when both gateways
    restart; in Redis the quota is a hash (used, limit, reset) expiring a minute after its period, and the bucket
    a TAT expiring a second after it is full again."""
    key = {"X-API-Key": api_key("bob")}
    client = fresh_client("slow")
    first = standalone.gateways[0]
    assert [first.get("/quota", key).status for _ in range(QUOTA)] == [200] * QUOTA
    assert [r.status for r in alternate(standalone.gateways, "/slow", client, count=3)] == [200, 200, 429]
    for gw in standalone.gateways:
        gw.restart()
    for index, gw in enumerate(standalone.gateways):
        again = gw.get("/quota", key, index=index)
        assert not refused_problem_errors(again, QUOTA_EXCEEDED), (index, again)
        slow = gw.get("/slow", client, index=index)
        assert not refused_problem_errors(slow, THROTTLED), (index, slow)
        assert 1 <= int(slow.headers["retry-after"]) <= 10, slow.headers

    name, _, end = quota_key("bob", "small")
    fields = standalone.redis_call(name, "HGETALL", name)
    stored = dict(zip(fields[::2], fields[1::2])) if fields else {}
    assert stored == {"used": str(QUOTA), "limit": str(QUOTA), "reset": str(end)}, (name, stored, standalone.keys())
    ttl = standalone.redis_call(name, "TTL", name)
    assert abs(ttl - (end + 60 - time.time())) < 5, ttl

    bucket = f"gwc:{{h:{hashlib.md5(client['X-Client'].encode()).hexdigest()}}}:r:{first.limit_id('slow')}"
    tat_ms = float(standalone.redis_call(bucket, "GET", bucket))
    now_ms = time.time() * 1000
    # Two requests on an idle bucket push the TAT two intervals (20 s) ahead of the first.
    assert 10_000 < tat_ms - now_ms <= 20_000, tat_ms - now_ms
    pttl = standalone.redis_call(bucket, "PTTL", bucket)
    assert abs(pttl - (tat_ms + 1000 - now_ms)) < 2000, (pttl, tat_ms - now_ms)


# --------------------------------------------------------------------------- Cluster resharding


def test_cluster_slot_migration_during_traffic(cluster: Fleet, cluster_servers: RedisCluster) -> None:
    """The slots of a rate key and of a quota hash move to another master (ASK while migrating, MOVED after)
    while both gateways serve them: no 5xx, the limit holds throughout and afterwards, and the quota counted
    every request it allowed (none slipped through on_error)."""
    headers = fresh_client("reshard")
    consumer = {"X-API-Key": api_key("erin")}
    value = headers["X-Client"]
    rate_tag = f"{{h:{hashlib.md5(value.encode()).hexdigest()}}}"
    quota_name, _, _ = quota_key("erin", "roomy")
    slots = [key_slot(rate_tag), key_slot(quota_name)]

    loops = {"rate": (cluster.gateways, "/shared", headers, 0.01),
             "quota": (cluster.gateways, "/quota", consumer, 0.02)}
    with traffic(loops) as results:
        time.sleep(0.8)
        # Without the script cached anywhere, EVALSHA meets NOSCRIPT on both sides of each ASK: the EVAL that
        # follows must be ASKING too, or the target sends it back to the source.
        for node in cluster_servers.nodes:
            node.call("SCRIPT", "FLUSH")
        migrations = [cluster_servers.begin_migration(slot, cluster_servers.other_master(slot)) for slot in slots]
        time.sleep(0.6)  # ASK for keys written since begin(), the old owner for the rest
        for m in migrations:
            m.migrate_keys()
        time.sleep(0.6)  # every key on the target: ASK for all of them
        for m in migrations:
            m.finish()
        finished = time.monotonic()
        time.sleep(2.0)  # MOVED, then the refreshed slot map
    rate, quota = results["rate"], results["quota"]
    print(f"reshard: rate {by_status(rate)} bound {window_bound(rate):.1f}, quota {by_status(quota)}")
    for label, responses in results.items():
        failed = [r for r in responses if r.error or r.status >= 500]
        assert not failed, f"{label}: {len(failed)} failed of {len(responses)}, first: {failed[0]}"
    allowed = [r for r in rate if r.status == 200]
    assert len(allowed) <= window_bound(rate), (len(allowed), window_bound(rate), by_status(rate))
    # Over every window, too: no moment of the migration handed out a fresh bucket.
    assert not excess_windows(rate), excess_windows(rate)[:5]
    after = [r for r in rate if r.started > finished]
    after_allowed = sum(r.status == 200 for r in after)
    assert after and after_allowed <= window_bound(after), (after_allowed, window_bound(after), by_status(after))
    assert {r.status for r in after} == {200, 429}, by_status(after)
    # erin's plan allows 20/s with a burst of 5 against 50 requests/s, so some are throttled; every allowed one counted.
    quota_allowed = sum(r.status == 200 for r in quota)
    used = cluster.redis_call(quota_name, "HGET", quota_name, "used")
    assert used is not None and int(used) == quota_allowed, (used, quota_allowed, by_status(quota))
    for slot, migration in zip(slots, migrations):
        assert cluster_servers.owner(slot) is migration.target
    # The gateways really went through ASK (then ASKING + EVALSHA, NOSCRIPT, ASKING + EVAL) on the new owners.
    for target in {m.target.port: m.target for m in migrations}.values():
        stats = command_calls(target)
        assert stats.get("asking", 0) > 0 and stats.get("eval", 0) > 0, (target.address, stats)
    # And they keep the new slot map: the old owners no longer see these keys (each MOVED there is a rejected call).
    sources = {m.source.port: m.source for m in migrations}.values()
    rejected = {s.port: command_calls(s, "rejected_calls").get("evalsha", 0) for s in sources}
    print(f"reshard: EVALSHA calls the old owners refused (MOVED/ASK): {rejected}")
    later = alternate(cluster.gateways, "/shared", headers, count=20)
    later += alternate(cluster.gateways, "/quota", consumer, count=20)
    assert {r.status for r in later} <= {200, 429}, by_status(later)
    for s in sources:
        assert command_calls(s, "rejected_calls").get("evalsha", 0) == rejected[s.port], f"MOVED again from {s.address}"


def command_calls(node, field: str = "calls") -> Dict[str, int]:
    """Per command since the server started (INFO commandstats): `calls`, or `rejected_calls` (MOVED, ASK...)."""
    out = {}
    for line in node.call("INFO", "commandstats").splitlines():
        name = re.match(r"cmdstat_([a-z|]+):", line)
        value = re.search(rf"\b{field}=([0-9]+)", line)
        if name and value:
            out[name.group(1)] = int(value.group(1))
    return out


def client_on(cluster_servers: RedisCluster, node, label: str) -> Dict[str, str]:
    """An X-Client value whose rate key lives on `node` (or, with node None, on any other master)."""
    for i in range(10000):
        value = f"{label}-{i}"
        owner = cluster_servers.key_owner(f"{{h:{hashlib.md5(value.encode()).hexdigest()}}}")
        if (owner is node) if node is not None else (owner is not cluster_servers.nodes[0]):
            return {"X-Client": value}
    raise LookupError(f"no {label} value for {node}")


def test_cluster_master_down_then_back(work_dir, backends) -> None:
    """One of three masters stops (no replicas) for a second under load on an on_error deny gateway: its keys get
    503 limit_unavailable at once, the keys of the other masters stay limited, no other 5xx; once it is back,
    limiting resumes on both."""
    with RedisCluster() as servers:
        seeds = ", ".join(f"'{url}'" for url in servers.seeds)
        gw, = build_gateways(work_dir, "fleet-cluster-down", backends["A"], f"cluster: [{seeds}]", count=1,
                             on_error="deny")
        victim = servers.nodes[0]
        clients = {"dead": client_on(servers, victim, "dead"), "live": client_on(servers, None, "live")}
        with running([gw]):
            with traffic({label: ([gw], "/shared", client, 0.02) for label, client in clients.items()}) as results:
                time.sleep(1.0)
                stopping = time.monotonic()
                victim.stop()
                down = time.monotonic()
                time.sleep(1.0)
                victim.start()
                servers.wait_ok(deadline_s=20)
                back = time.monotonic()
            for label, responses in results.items():
                broken = [r for r in responses if r.error or r.status not in (200, 429, 503)]
                assert not broken, f"{label}: {len(broken)} requests broke: {broken[0]}"
                before = by_status([r for r in responses if r.ended < stopping])
                print(f"cluster master down, {label} key: before {before}, "
                      f"down {by_status([r for r in responses if down <= r.started < back])}")
            before = [r for r in results["dead"] + results["live"] if r.ended < stopping]
            assert {r.status for r in before} == {200, 429}, by_status(before)
            # A stopped node refuses connections at once; its keys alone are unavailable.
            dead = [r for r in results["dead"] if down + 0.3 < r.started and r.ended < down + 1.0]
            live = [r for r in results["live"] if down + 0.3 < r.started and r.ended < down + 1.0]
            assert dead and {r.status for r in dead} == {503}, by_status(dead)
            assert live and {r.status for r in live} <= {200, 429}, by_status(live)
            for label, node in (("dead", victim), ("live", None)):
                def again(node=node, label=label):
                    return client_on(servers, node, f"again-{label}-{time.monotonic_ns()}")

                _wait_for_limiting(gw, want={200, 429}, new_client=again)
        assert_clean_logs([gw], allow=redis_line)


def test_cluster_failover_during_traffic(work_dir, backends) -> None:
    """A master with a replica stops while both on_error deny gateways limit a key it serves; the replica takes
    over. Until then that key is 503 (never another 5xx); afterwards the gateways find the new master from a fresh
    slot map by themselves, and the limit holds again on both."""
    with RedisCluster() as servers:
        victim = servers.nodes[0]
        replica = servers.add_replica(victim)
        seeds = ", ".join(f"'{url}'" for url in servers.seeds)
        gateways = build_gateways(work_dir, "fleet-failover", backends["A"], f"cluster: [{seeds}]", on_error="deny")
        client = client_on(servers, victim, "failover")
        with running(gateways):
            with traffic({"failover": (gateways, "/shared", client, 0.01)}) as loops:
                time.sleep(1.0)
                stopping = time.monotonic()
                victim.stop()
                servers.failover(replica)
                promoted = time.monotonic()

                def fresh_on_the_new_master():
                    return client_on(servers, replica, f"after-failover-{time.monotonic_ns()}")

                for gw in gateways:
                    _wait_for_limiting(gw, want={200, 429}, new_client=fresh_on_the_new_master)
                recovered = time.monotonic()
                time.sleep(1.5)
        results = loops["failover"]
        broken = [r for r in results if r.error or r.status not in (200, 429, 503)]
        assert not broken, f"{len(broken)} requests broke: {broken[0]}"
        before = [r for r in results if r.ended < stopping]
        after = [r for r in results if r.started > recovered]
        print(f"failover: before {by_status(before)}, until promoted "
              f"{by_status([r for r in results if stopping <= r.started < promoted])}, after {by_status(after)}, "
              f"recovered {recovered - promoted:.1f}s after the promotion")
        assert {r.status for r in before} == {200, 429}, by_status(before)
        assert after and {r.status for r in after} == {200, 429}, by_status(after)
        assert sum(r.status == 200 for r in after) <= window_bound(after) and not excess_windows(after)
        assert {r.gateway for r in after if r.status == 429} == {0, 1}
        assert_clean_logs(gateways, allow=redis_line)


# --------------------------------------------------------------------------- Redis down


# nginx itself logs a reset or refused cosocket (the Redis connection) at [error], whatever lua_socket_log_errors
# says; such a line names no upstream, unlike a proxy_pass failure.
_COSOCKET_ERROR = re.compile(r"\b(recv|send|connect|writev|readv)\(\) failed \(")


def redis_line(line: str) -> bool:
    return "redis" in line.lower() or (_COSOCKET_ERROR.search(line) is not None and "upstream:" not in line)


def redis_lines(text: str) -> List[str]:
    return [line for line in severe_lines(text) if redis_line(line)]


def test_redis_slow_then_down_under_load_then_back(work_dir, backends) -> None:
    """Redis paused (SIGSTOP: connections hang, so each call ends at `timeout`), then stopped (refused), then
    started again on its port, while one client loop runs on an on_error allow gateway and one on a deny gateway."""
    server = RedisServer().start()
    try:
        allow_gw, = build_gateways(work_dir, "fleet-outage-allow", backends["A"],
                                   f"url: 'redis://127.0.0.1:{server.port}'", count=1, on_error="allow")
        deny_gw, = build_gateways(work_dir, "fleet-outage-deny", backends["A"],
                                  f"url: 'redis://127.0.0.1:{server.port}'", count=1, on_error="deny")
        with running([allow_gw, deny_gw]):
            _outage_under_load(server, allow_gw, deny_gw)
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.cleanup()


def _outage_under_load(server: RedisServer, allow_gw: Gateway, deny_gw: Gateway) -> None:
    # Over the limit on purpose (50/s against 10/s), so "limited" and "not limited" look different. The allow
    # gateway's operation also has a node limit (15/s), which must go on limiting while Redis is away.
    clients = {"allow": fresh_client("outage-allow"), "deny": fresh_client("outage-deny")}
    loops = {"allow": ([allow_gw], "/mixed", clients["allow"], 0.02),
             "deny": ([deny_gw], "/shared", clients["deny"], 0.02)}
    phases = {}
    with traffic(loops) as results:
        time.sleep(1.5)
        phases["paused"] = time.monotonic()
        os.kill(server.proc.pid, signal.SIGSTOP)
        time.sleep(2.0)
        phases["stopped"] = time.monotonic()
        # Woken up, Redis answers what queued during the pause until SIGTERM ends it: only after it has exited
        # is it down.
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()
        phases["down"] = time.monotonic()
        time.sleep(2.0)
        phases["restarted"] = time.monotonic()
        server.start()
        time.sleep(1.0)
    grace = 0.5  # requests in flight when a phase changed may see either side of it

    def during(responses, first, last):
        return [r for r in responses if r.started > first + grace and r.ended < last]

    def outage(responses):
        paused = during(responses, phases["paused"], phases["stopped"])
        return paused + during(responses, phases["down"], phases["restarted"])

    allow, deny = results["allow"], results["deny"]
    for label, responses in results.items():
        for phase, (first, last) in {"healthy": (0, phases["paused"]), "paused": (phases["paused"], phases["stopped"]),
                                     "stopped": (phases["down"], phases["restarted"]),
                                     "restarted": (phases["restarted"], float("inf"))}.items():
            part = [r for r in responses if first <= r.started < last]
            slowest = max((r.ended - r.started for r in part), default=0)
            print(f"outage {label} {phase}: {by_status(part)}, slowest {slowest * 1000:.0f} ms")
    for label, responses in results.items():
        broken = [r for r in responses if r.error]
        assert not broken, f"{label}: {len(broken)} missed the {CLIENT_DEADLINE_S}s deadline or broke: {broken[0]}"
    assert {r.status for r in allow} <= {200, 429}, f"on_error allow: {by_status(allow)}"
    outage_allow = outage(allow)
    assert outage_allow and {r.status for r in outage_allow} == {200, 429}, by_status(outage_allow)
    deciding = {r.headers.get("ratelimit", "").split(";")[0] for r in outage_allow if r.status == 429}
    assert deciding == {'"per-client-node"'}, f"without Redis only the node limit refuses: {deciding}"
    healthy_deciding = {r.headers.get("ratelimit", "").split(";")[0]
                        for r in allow if r.ended < phases["paused"] and r.status == 429}
    assert '"per-client"' in healthy_deciding, f"the fleet limit (10/s) refuses before the outage: {healthy_deciding}"

    assert {r.status for r in deny} <= {200, 429, 503}, f"on_error deny: {by_status(deny)}"
    outage_deny = outage(deny)
    assert outage_deny and {r.status for r in outage_deny} == {503}, by_status(outage_deny)
    unavailable = outage_deny[0]
    unavailable_headers = (unavailable.headers.get("content-type"), unavailable.headers.get("retry-after"))
    assert unavailable_headers == (PROBLEM, "1"), unavailable
    assert (unavailable.json.get("status"), unavailable.json.get("detail")) == (503, "The rate limiter is unavailable.")
    assert "x-backend" not in unavailable.headers
    assert 503 not in {r.status for r in deny if r.ended < phases["paused"]}

    # Recovery without any action: limiting resumes (allow: 429s again; deny: 200s and 429s, no 503).
    _wait_for_limiting(allow_gw, want={200, 429})
    _wait_for_limiting(deny_gw, want={200, 429})

    assert access_record(deny_gw, unavailable)["reason"] == "limit_unavailable"
    for gw, responses in ((allow_gw, allow), (deny_gw, deny)):
        lines = redis_lines(gw.log_text())
        workers = max(1, len(gw.nginx.worker_pids()))
        # Once per 10 s per worker (two phases may each open a line): a handful, not one per failed request.
        print(f"{gw.out_dir.parent.name}: {len(lines)} Redis lines in the error log, {workers} workers")
        # gwc.redis: once per 10 s per worker (the pause and the stop may each open one); nginx: one per pooled
        # connection Redis reset when it stopped. A handful, not one per failed request.
        assert 1 <= len(lines) <= 4 * workers, "\n".join(lines[:20])
        assert len(responses) > 10 * len(lines)
    assert_clean_logs([allow_gw, deny_gw], allow=redis_line)


def _wait_for_limiting(gw: Gateway, want: set, deadline_s: float = 10.0,
                       new_client: Callable[[], Dict[str, str]] = lambda: fresh_client("recovery")) -> None:
    """Until a fresh client's burst of 12 is limited exactly again (at most the burst plus refill passes)."""
    end = time.monotonic() + deadline_s
    seen = {}
    while time.monotonic() < end:
        burst = alternate([gw], "/shared", new_client(), count=12)
        seen = by_status(burst)
        allowed = seen.get(200, 0)
        if set(seen) == want and allowed <= window_bound(burst):
            print(f"recovered {gw.out_dir.parent.name}: {seen} after {deadline_s - (end - time.monotonic()):.1f}s")
            return
        time.sleep(0.2)
    raise AssertionError(f"limiting did not resume within {deadline_s}s after Redis restarted: last burst {seen}")


# A Redis that answers but refuses: AUTH with the wrong password (the handshake), or a full memory (the script).
REFUSALS = [
    pytest.param({"env": {PASSWORD_ENV: "not-the-password"}, "config": [], "log": "WRONGPASS"}, id="wrong-password"),
    pytest.param({"env": {PASSWORD_ENV: PASSWORD}, "config": [("maxmemory", "1")], "log": "OOM"}, id="out-of-memory"),
]


@pytest.mark.parametrize("fault", REFUSALS)
def test_a_refusing_redis_is_handled_by_on_error(work_dir, backends, fault) -> None:
    with RedisServer(password=PASSWORD) as server:
        for name, value in fault["config"]:
            server.call("CONFIG", "SET", name, value)
        label = f"fleet-refusing-{fault['log'].lower()}"
        gateways = [build_gateways(work_dir, f"{label}-{on_error}", backends["A"],
                                   f"url: 'redis://127.0.0.1:{server.port}'", count=1, on_error=on_error,
                                   password=True)[0] for on_error in ("allow", "deny")]
        for gw in gateways:
            gw.env = fault["env"]
        with running(gateways):
            allow, deny = (alternate([gw], "/shared", fresh_client(label), count=20) for gw in gateways)
            workers = [len(gw.nginx.worker_pids()) for gw in gateways]
        assert [r.status for r in allow] == [200] * 20 and all("x-backend" in r.headers for r in allow)
        assert [r.status for r in deny] == [503] * 20 and all("x-backend" not in r.headers for r in deny)
        for gw, count in zip(gateways, workers):
            lines = redis_lines(gw.log_text())
            # Once per worker in this short run, saying why.
            assert 1 <= len(lines) <= count and all(fault["log"] in line for line in lines), "\n".join(lines)
        assert_clean_logs(gateways, allow=redis_line)
