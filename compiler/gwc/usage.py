"""Usage reports (AWS GetUsage): each consumer's quota use in the current period.

Fleet quotas are read from Redis, where the gateways' limit script keeps a hash
per consumer, plan and period (`<prefix>:{c:<consumer>}:q:<plan>:<period start>`
with `used`, `limit` and `reset`, the period end); node quotas from a gateway's
status listener (`GET /usage`), which reads its `gwc_limits` shared dict.
Both become the same records, so filtering and formatting are shared.
"""
from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, List, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

TIMEOUT_S = 5.0
SCAN_COUNT = 1000
# Requests without a consumer are counted by client address (tag ip:<addr>),
# reported as the consumer "ip:<addr>", as the node counters name them.
_TAG = r"\{(?:c:(?P<consumer>[A-Za-z0-9._@-]+)|(?P<ip>ip:[^{}]+))\}"
COLUMNS = ("consumer", "plan", "used", "limit", "remaining", "resets_at")
_NUMERIC = {"used", "limit", "remaining"}


class UsageError(Exception):
    """The usage source cannot be read; the message is one line for the user."""


@dataclass(frozen=True)
class Usage:
    consumer: str
    plan: str
    used: int
    limit: int
    period_start: int  # epoch seconds, UTC
    reset: int  # the period's end, epoch seconds

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)  # a lowered limit can be below what was used

    def data(self) -> dict:
        return {
            "consumer": self.consumer, "plan": self.plan, "used": self.used, "limit": self.limit,
            "remaining": self.remaining,
            "period_start": iso(self.period_start), "period_start_epoch": self.period_start,
            "reset": iso(self.reset), "reset_epoch": self.reset,
        }


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_pattern(prefix: str) -> "re.Pattern[str]":
    return re.compile(rf"^{re.escape(prefix)}:{_TAG}:q:(?P<plan>[A-Za-z0-9_-]+):(?P<start>[0-9]+)$")


def select(rows: Iterable[Usage], plan: Optional[str] = None, consumer: Optional[str] = None) -> List[Usage]:
    """The rows of one plan and/or consumer, sorted by consumer then plan."""
    chosen = [r for r in rows if (plan is None or r.plan == plan) and (consumer is None or r.consumer == consumer)]
    return sorted(chosen, key=lambda r: (r.consumer, r.plan))


def current(rows: Iterable[Usage], now: float) -> List[Usage]:
    """Only the periods that contain `now`: a finished period's hash lingers a minute past its end."""
    return [r for r in rows if r.period_start <= now < r.reset]


# --- formatting -------------------------------------------------------------------
def render_json(rows: Sequence[Usage], scope: str, now: int) -> str:
    return json.dumps({"scope": scope, "time": iso(now), "time_epoch": now, "usage": [r.data() for r in rows]}, indent=1)


def render_table(rows: Sequence[Usage]) -> str:
    """Aligned columns: text to the left, numbers to the right."""
    cells = [list(COLUMNS)]
    for r in rows:
        cells.append([r.consumer, r.plan, str(r.used), str(r.limit), str(r.remaining), iso(r.reset)])
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = []
    for row in cells:
        parts = [cell.rjust(w) if name in _NUMERIC else cell.ljust(w) for cell, w, name in zip(row, widths, COLUMNS)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def render(rows: Sequence[Usage], fmt: str, scope: str, now: int) -> str:
    return render_json(rows, scope, now) if fmt == "json" else render_table(rows)


# --- Redis (fleet scope) ----------------------------------------------------------
def redacted(url: str) -> str:
    """The URL without a password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _redis_clients(url: str, cluster: bool, password: Optional[str]):
    """(the client that routes commands, the clients to SCAN: every master of a Cluster)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options = dict(socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S, decode_responses=True,
                   retry=Retry(NoBackoff(), 1))
    if password is not None:
        options["password"] = password
    if cluster:
        from redis.cluster import RedisCluster

        client = RedisCluster.from_url(url, cluster_error_retry_attempts=1, **options)
        return client, [node.redis_connection for node in client.get_primaries()]
    client = redis.Redis.from_url(url, **options)
    return client, [client]


def parse_hash(match: "re.Match[str]", fields: Sequence[Optional[str]]) -> Optional[Usage]:
    """A quota hash's (used, limit, reset) as a record; None for a hash the script did not write."""
    try:
        used, limit, reset = (int(f) for f in fields)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    consumer = match.group("consumer") or match.group("ip")
    return Usage(consumer, match.group("plan"), used, limit, int(match.group("start")), reset)


def from_redis(url: str, cluster: bool = False, password: Optional[str] = None, prefix: str = "gwc",
               now: Optional[float] = None) -> List[Usage]:
    """Every consumer's quota use in the current period. SCAN (never KEYS) on each master, so a
    large Redis keeps serving while the report runs."""
    import redis

    now = time.time() if now is None else now
    pattern = key_pattern(prefix)
    try:
        client, scanned = _redis_clients(url, cluster, password)
        keys: List[str] = []
        for node in scanned:
            keys += [k for k in node.scan_iter(match=f"{prefix}:{{*}}:q:*", count=SCAN_COUNT) if pattern.match(k)]
        rows = []
        for start in range(0, len(keys), SCAN_COUNT):
            batch = keys[start:start + SCAN_COUNT]
            pipe = client.pipeline(transaction=False)
            for key in batch:
                pipe.hmget(key, "used", "limit", "reset")
            for key, fields in zip(batch, pipe.execute(raise_on_error=False)):
                if isinstance(fields, list):  # an error reply: the key changed type, or moved away mid-scan
                    row = parse_hash(pattern.match(key), fields)
                    if row is not None:
                        rows.append(row)
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        raise UsageError(f"cannot read usage from {redacted(url)}: {_one_line(exc)}") from None
    return current(rows, now)


# --- a status listener (node scope) -------------------------------------------------
def status_endpoint(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/usage") else url + "/usage"


def from_status(url: str, now: Optional[float] = None) -> List[Usage]:
    """The node-scope quota use a gateway's status listener reports (GET /usage)."""
    endpoint = status_endpoint(url)
    try:
        with urllib.request.urlopen(endpoint, timeout=TIMEOUT_S) as response:
            body = json.loads(response.read().decode("utf-8"))
        rows = [Usage(r["consumer"], r["plan"], int(r["used"]), int(r["limit"]), int(r["period_start_epoch"]),
                      int(r["reset_epoch"])) for r in body["usage"]]
    except urllib.error.HTTPError as exc:
        hint = " (is this client's address in x-gateway.status.allow?)" if exc.code == 403 else ""
        raise UsageError(f"cannot read usage from {endpoint}: HTTP {exc.code}{hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UsageError(f"cannot read usage from {endpoint}: {_one_line(getattr(exc, 'reason', exc))}") from None
    except (KeyError, TypeError) as exc:
        raise UsageError(f"cannot read usage from {endpoint}: not a gwc status listener's answer ({_one_line(exc)})") from None
    return rows if now is None else current(rows, now)


def _one_line(exc) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
