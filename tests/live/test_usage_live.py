"""Usage reports against the counters a live run produced: real nginx, real requests, `gwc usage` as shipped.

Node scope: no Redis; the gateway's status listener serves its gwc_limits counters on /usage.
Fleet scope: a real redis-server (standalone with a password, and a three-master Cluster); `gwc usage --redis`
scans it. Every case sends a request sequence per consumer, checks each status, then checks that the report
(JSON and table) says exactly what the run counted.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import requests

from harness import severe_lines
from support.processes import Nginx, free_port
from support.redis_servers import RedisCluster, RedisServer, key_slot

pytestmark = pytest.mark.live

PASSWORD_ENV = "GWC_TEST_USAGE_REDIS_PASSWORD"
SPEC = """\
openapi: 3.0.3
info: {title: usage live test, version: "1"}
x-gateway:
  keys: keys.yaml
  status: __STATUS__
__REDIS__
  plans:
    free: {quota: {limit: 5, period: day}}
    pro: {rate: 1000/s, burst: 1000, quota: {limit: 1000, period: month}}
components:
  securitySchemes:
    key: {type: apiKey, in: header, name: X-API-Key}
security: [{key: []}]
paths:
  /pets:
    get:
      operationId: listPets
      x-gateway: {mock: {body: {ok: true}}}
      responses: {"200": {description: ok}}
"""

# The run, as data: (consumer, plan, requests sent, statuses expected in order). A free consumer's sixth
# request finds its quota of 5 used up; a refused request is not counted.
RUN: List[Tuple[str, str, int, List[int]]] = [
    ("alice", "free", 7, [200] * 5 + [429] * 2),
    ("bob", "pro", 3, [200] * 3),
]


def gwc(*args: str, cwd: Path, env: Dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gwc.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def build(directory: Path, port: int, status: str, redis: str, consumers: List[Tuple[str, str]]) -> Dict[str, str]:
    """Writes the spec and a key file made by `gwc keys new`, builds; returns each consumer's key."""
    directory.mkdir(parents=True)
    os.chmod(directory, 0o755)  # nginx workers run as nobody when the suite runs as root
    (directory / "api.yaml").write_text(SPEC.replace("__STATUS__", status).replace("__REDIS__", redis))
    (directory / "keys.yaml").write_text("consumers: []\n")
    keys = {}
    for consumer, plan in consumers:
        made = gwc("keys", "new", "--id", consumer, "--plan", plan, "--file", "keys.yaml", cwd=directory)
        assert made.returncode == 0, made.stderr
        keys[consumer] = made.stdout.strip().splitlines()[-1]
    built = gwc("build", "api.yaml", "-o", "out", "--listen", f"127.0.0.1:{port}", cwd=directory)
    assert built.returncode == 0, built.stderr
    return keys


def drive(port: int, keys: Dict[str, str], run=RUN) -> Dict[Tuple[str, str], int]:
    """Sends the run's requests; returns the allowed count per (consumer, plan), as the gateway should count it."""
    counted = {}
    with requests.Session() as session:
        for consumer, plan, n, expected in run:
            statuses = [session.get(f"http://127.0.0.1:{port}/pets", headers={"X-API-Key": keys[consumer]}, timeout=10).status_code
                        for _ in range(n)]
            assert statuses == expected, f"{consumer}: {statuses}"
            counted[(consumer, plan)] = statuses.count(200)
    return counted


def bounds(plan: str, now: float) -> Tuple[int, int]:
    """The current period of the spec's quotas, from the calendar (day, and month with offset 0)."""
    t = datetime.fromtimestamp(now, timezone.utc)
    if plan == "free":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return int(start.timestamp()), int(start.timestamp()) + 86400
    start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return int(start.timestamp()), int(end.timestamp())


LIMITS = {"free": 5, "pro": 1000}
COLUMNS = ("consumer", "plan", "used", "limit", "remaining", "resets_at")


def expected_rows(counted: Dict[Tuple[str, str], int], now: float) -> List[dict]:
    rows = []
    for (consumer, plan), used in sorted(counted.items()):
        start, end = bounds(plan, now)
        rows.append({
            "consumer": consumer, "plan": plan, "used": used, "limit": LIMITS[plan], "remaining": LIMITS[plan] - used,
            "period_start": iso(start), "period_start_epoch": start, "reset": iso(end), "reset_epoch": end,
        })
    return rows


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_reports(source: List[str], counted: Dict[Tuple[str, str], int], scope: str, cwd: Path, env=None) -> None:
    """`gwc usage` in JSON and as a table, whole and filtered, against what the run counted."""
    now = time.time()
    want = expected_rows(counted, now)
    report = gwc("usage", *source, "--format", "json", cwd=cwd, env=env)
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["scope"] == scope
    assert data["usage"] == want

    table = gwc("usage", *source, cwd=cwd, env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.rstrip("\n").split("\n")
    assert tuple(lines[0].split()) == COLUMNS
    cells = [line.split() for line in lines[1:]]
    assert cells == [[r["consumer"], r["plan"], str(r["used"]), str(r["limit"]), str(r["remaining"]), r["reset"]] for r in want]
    # Aligned: text columns start, and number columns end, where their header does.
    spans = [[(m.start(), m.end()) for m in re.finditer(r"\S+", line)] for line in lines]
    for row in spans[1:]:
        for column, (start, end), (head_start, head_end) in zip(COLUMNS, row, spans[0]):
            assert (end == head_end) if column in ("used", "limit", "remaining") else (start == head_start), table.stdout

    by_plan = gwc("usage", *source, "--format", "json", "--plan", "pro", cwd=cwd, env=env)
    assert [r["consumer"] for r in json.loads(by_plan.stdout)["usage"]] == [r["consumer"] for r in want if r["plan"] == "pro"]
    one = want[0]["consumer"]
    by_consumer = gwc("usage", *source, "--format", "json", "--consumer", one, cwd=cwd, env=env)
    assert json.loads(by_consumer.stdout)["usage"] == [r for r in want if r["consumer"] == one]


def assert_clean_log(nginx: Nginx) -> None:
    bad = severe_lines(nginx.read_error_log())
    assert not bad, "\n".join(bad)


@pytest.fixture
def place(work_dir, request):
    path = work_dir / f"usage-{request.node.name}"
    yield path


def test_node_usage_from_the_status_listener(place):
    port, status_port = free_port(), free_port()
    keys = build(place, port, f'{{listen: "127.0.0.1:{status_port}"}}', "", [("alice", "free"), ("bob", "pro")])
    with Nginx(place / "out").start([port, status_port]) as nginx:
        counted = drive(port, keys)
        check_reports(["--status", f"http://127.0.0.1:{status_port}"], counted, "node", place)

        direct = requests.get(f"http://127.0.0.1:{status_port}/usage", timeout=10)
        assert direct.status_code == 200 and direct.headers["Content-Type"] == "application/json"
        assert direct.json()["usage"] == expected_rows(counted, time.time())
        assert requests.get(f"http://127.0.0.1:{status_port}/usage?consumer=bob", timeout=10).json()["usage"] == \
            expected_rows({k: v for k, v in counted.items() if k[0] == "bob"}, time.time())
        health = requests.get(f"http://127.0.0.1:{status_port}/healthz", timeout=10)
        assert (health.status_code, health.text) == (200, "ok")
        assert requests.post(f"http://127.0.0.1:{status_port}/usage", timeout=10).status_code == 405
        assert requests.get(f"http://127.0.0.1:{status_port}/other", timeout=10).status_code == 404
        # The public listener knows no /usage: the router's 404, with or without a key.
        assert requests.get(f"http://127.0.0.1:{port}/usage", timeout=10).status_code == 404
        assert requests.get(f"http://127.0.0.1:{port}/usage", headers={"X-API-Key": keys["bob"]}, timeout=10).status_code == 404

        # The shared dict outlives a reload, and the new workers report it.
        old_workers = set(nginx.worker_pids())
        reload = subprocess.run([nginx.binary, "-p", str(nginx.prefix) + "/", "-c", "nginx.conf", "-s", "reload"],
                                capture_output=True, text=True, timeout=30)
        assert reload.returncode == 0, reload.stderr
        deadline = time.monotonic() + 15
        while set(nginx.worker_pids()) & old_workers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not set(nginx.worker_pids()) & old_workers, "the old workers did not exit"
        check_reports(["--status", f"http://127.0.0.1:{status_port}"], counted, "node", place)
        assert_clean_log(nginx)

    gone = gwc("usage", "--status", f"http://127.0.0.1:{status_port}", cwd=place)
    assert gone.returncode == 1 and gone.stdout == ""
    assert len(gone.stderr.strip().splitlines()) == 1 and "Traceback" not in gone.stderr, gone.stderr


def test_fleet_usage_from_redis(place, monkeypatch):
    port, status_port = free_port(), free_port()
    redis = RedisServer(password="usage-s3cret").start()
    try:
        monkeypatch.setenv(PASSWORD_ENV, redis.password)
        redis_block = f"  redis: {{url: 'redis://127.0.0.1:{redis.port}/0', password_env: {PASSWORD_ENV}}}"
        # Only 10.0.0.0/8 may read the status listener, so this (loopback) client is refused.
        keys = build(place, port, f'{{listen: "127.0.0.1:{status_port}", allow: [10.0.0.0/8]}}', redis_block,
                     [("alice", "free"), ("bob", "pro")])
        with Nginx(place / "out").start([port, status_port]) as nginx:
            counted = drive(port, keys)
            assert requests.get(f"http://127.0.0.1:{status_port}/usage", timeout=10).status_code == 403
            assert requests.get(f"http://127.0.0.1:{status_port}/healthz", timeout=10).status_code == 403
            refused = gwc("usage", "--status", f"http://127.0.0.1:{status_port}", cwd=place)
            assert refused.returncode == 1 and "HTTP 403" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
            assert_clean_log(nginx)

        # The counters are Redis's, so they outlive the gateway.
        source = ["--redis", f"redis://127.0.0.1:{redis.port}/0", "--password-env", PASSWORD_ENV]
        check_reports(source, counted, "fleet", place)
        start, _ = bounds("free", time.time())
        assert redis.call("HGET", f"gwc:{{c:alice}}:q:free:{start}", "used") == "5"

        wrong = gwc("usage", "--redis", f"redis://127.0.0.1:{redis.port}/0", cwd=place)  # no password
        assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
        redis.stop()
        down = gwc("usage", *source, cwd=place)
        assert down.returncode == 1 and down.stdout == "" and "Traceback" not in down.stderr
        assert len(down.stderr.strip().splitlines()) == 1, down.stderr
        assert "usage-s3cret" not in down.stderr
    finally:
        redis.cleanup()


def _spread(cluster: RedisCluster, candidates: List[str], masters: int) -> List[str]:
    """Consumer ids whose quota keys land on `masters` different masters, so one node's SCAN cannot see them all."""
    chosen, owners = [], set()
    for consumer in candidates:
        owner = cluster.owner(key_slot(f"{{c:{consumer}}}")).port
        if owner not in owners:
            owners.add(owner)
            chosen.append(consumer)
        if len(chosen) == masters:
            return chosen
    raise AssertionError("no spread of consumers over the masters")


@pytest.mark.slow
def test_fleet_usage_from_a_redis_cluster(place):
    port, status_port = free_port(), free_port()
    with RedisCluster() as cluster:
        consumers = _spread(cluster, [f"user{i}" for i in range(64)], 3)
        plans = ["free", "pro", "free"]
        seeds = ", ".join(f"'redis://127.0.0.1:{n.port}'" for n in cluster.nodes)
        keys = build(place, port, f'{{listen: "127.0.0.1:{status_port}"}}', f"  redis: {{cluster: [{seeds}]}}",
                     list(zip(consumers, plans)))
        run = [(consumers[0], "free", 6, [200] * 5 + [429]), (consumers[1], "pro", 4, [200] * 4),
               (consumers[2], "free", 2, [200] * 2)]
        with Nginx(place / "out").start([port, status_port]) as nginx:
            counted = drive(port, keys, run)
            # Fleet quotas are not node counters: the status listener has none to report.
            assert requests.get(f"http://127.0.0.1:{status_port}/usage", timeout=10).json()["usage"] == []
            assert_clean_log(nginx)
        check_reports(["--redis", f"redis://127.0.0.1:{cluster.nodes[0].port}", "--cluster"], counted, "fleet", place)


def test_fleet_usage_over_tls_with_a_private_ca(place):
    """rediss:// as the gateways use it; the report verifies the server against the CA given in the URL."""
    with RedisServer(tls=True) as redis:
        start, end = bounds("free", time.time())
        with redis.connect() as conn:
            conn.call("HSET", f"gwc:{{c:zed}}:q:free:{start}", "used", 2, "limit", 5, "reset", end)
            conn.call("HSET", f"gwc:{{c:zed}}:q:free:{start - 86400}", "used", 5, "limit", 5, "reset", start)  # yesterday
        place.mkdir()
        unverified = gwc("usage", "--redis", f"rediss://127.0.0.1:{redis.port}", cwd=place)
        assert unverified.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in unverified.stderr
        verified = gwc("usage", "--redis", f"rediss://127.0.0.1:{redis.port}?ssl_ca_certs={redis.ca_path}", "--format", "json", cwd=place)
        assert verified.returncode == 0, verified.stderr
        assert json.loads(verified.stdout)["usage"] == expected_rows({("zed", "free"): 2}, time.time())
