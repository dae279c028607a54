"""Stage 3, traffic policy: rate limits, usage plans, quotas and the Redis they share.

Every limit is a token bucket (GCRA at runtime, see lua/gwc/limits.lua):
capacity max(burst, 1), refilled at `rate`. This module decides the units
(interval in ms, capacity), each limit's stable id (which keeps counters
across rebuilds that leave the limit alone), and which limits nginx's own
`limit_req` can enforce exactly.
"""
from __future__ import annotations

import hashlib
import json
import os
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .diagnostics import Diagnostic, escape_pointer_token
from .load import SourceFile
from .schema_defaults import with_defaults

_RATE = re.compile(r"^([0-9]+)/(s|min|h)$")
_PERIOD_S = {"s": 1, "min": 60, "h": 3600}
_NGINX_PER = {"s": "r/s", "min": "r/m"}
QUOTA_PERIOD_S = {"day": 86_400, "week": 604_800, "month": 2_592_000}  # month: 30 days, for RateLimit-Policy's w
_QUOTA_OFFSET_MAX = {"day": 0, "week": 6, "month": 27}
NATIVE_KEYS = {"ip": "$binary_remote_addr", "route": "$gw_op", "global": "gwc"}
HEADER_MODES = ("ietf", "legacy", "both", "none")


@dataclass(frozen=True)
class RateLimit:
    id: str  # stable across rebuilds while the settings and the place they are written stay the same
    name: str
    rate: int
    per: str  # s, min or h
    burst: int
    key: str  # ip, consumer, route, global, claim or header
    key_arg: str  # the claim name, or the header's nginx variable suffix
    scope: str  # node or fleet

    @property
    def period_s(self) -> int:
        return _PERIOD_S[self.per]

    @property
    def capacity(self) -> int:
        return max(self.burst, 1)

    @property
    def interval_ms(self) -> float:
        return self.period_s * 1000 / self.rate

    @property
    def retry_after_s(self) -> int:
        """How long a refused client waits for one token: one interval, in whole seconds."""
        return max(1, math.ceil(self.interval_ms / 1000))

    def nginx_rate(self) -> Optional[str]:
        """limit_req's rate when it is exact: nginx keeps rates in requests per 1000 s, as an integer."""
        if self.per == "s":
            return f"{self.rate}r/s"
        per_minute = self.rate if self.per == "min" else (self.rate // 60 if self.rate % 60 == 0 else None)
        if per_minute is None or (per_minute * 1000) % 60:
            return None
        return f"{per_minute}r/m"

    def native(self, headers: str) -> bool:
        """nginx's limit_req enforces it: node scope, a key nginx knows, an exact rate, and no header that needs the count."""
        return headers == "none" and self.scope == "node" and self.key in NATIVE_KEYS and self.nginx_rate() is not None

    def data(self) -> dict:
        return {
            "id": self.id, "name": self.name, "key": self.key, "arg": self.key_arg,
            "interval": self.interval_ms, "capacity": self.capacity, "q": self.rate, "w": self.period_s,
            "scope": self.scope,
        }


@dataclass(frozen=True)
class Quota:
    id: str
    name: str
    limit: int
    period: str  # day, week or month
    offset: int
    scope: str

    def data(self) -> dict:
        return {"id": self.id, "name": self.name, "limit": self.limit, "period": self.period, "offset": self.offset,
                "w": QUOTA_PERIOD_S[self.period], "scope": self.scope}


@dataclass(frozen=True)
class Plan:
    name: str
    rate: Optional[RateLimit]
    quota: Optional[Quota]
    operations: Tuple[Tuple[str, RateLimit], ...]  # (operationId, the rate that replaces the plan's there)

    def data(self) -> dict:
        out: dict = {}
        if self.rate is not None:
            out["rate"] = self.rate.data()
        if self.quota is not None:
            out["quota"] = self.quota.data()
        if self.operations:
            out["operations"] = {op: limit.data() for op, limit in self.operations}
        return out


@dataclass(frozen=True)
class Redis:
    url: Optional[str]
    cluster: Tuple[str, ...]
    password_env: Optional[str]
    timeout_ms: int
    pool: int
    on_error: str
    prefix: str
    tls_verify: bool
    server_name: Optional[str] = None

    @property
    def tls(self) -> bool:
        return any(u.startswith("rediss://") for u in ((self.url,) if self.url else self.cluster))

    def data(self) -> dict:
        out: dict = {"timeout": self.timeout_ms, "pool": self.pool, "on_error": self.on_error, "prefix": self.prefix,
                     "ssl_verify": self.tls_verify}
        if self.url:
            out["url"] = self.url
        else:
            out["cluster"] = list(self.cluster)
        if self.password_env:
            out["password_env"] = self.password_env
        if self.server_name:
            out["server_name"] = self.server_name
        return out


@dataclass(frozen=True)
class Traffic:
    headers: str
    memory: str
    redis: Optional[Redis]
    plans: Tuple[Plan, ...]
    default_plan: Optional[str]

    @property
    def has_plans(self) -> bool:
        return bool(self.plans)

    def data(self) -> dict:
        out: dict = {"headers": self.headers, "dict": "gwc_limits",
                     "plans": {p.name: p.data() for p in self.plans}}
        if self.redis is not None:
            out["redis"] = self.redis.data()
        if self.default_plan:
            out["default_plan"] = self.default_plan
        return out


NO_TRAFFIC = Traffic("ietf", "10m", None, (), None)


def limit_id(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:8]


def header_var(name: str) -> str:
    return name.lower().replace("-", "_")


class TrafficBuilder:
    """Builds the document-wide traffic settings, then each operation's limits."""

    def __init__(self, diags: List[Diagnostic], reachable):
        self.diags = diags
        self.reachable = reachable  # SecurityBuilder.reachable: a host name needs nginx.resolver
        self.redis: Optional[Redis] = None
        self.root_dir: Optional[Path] = None
        self._built: Dict[Tuple[str, str, str], Optional[Tuple[RateLimit, ...]]] = {}

    def error(self, code: str, message: str, src: SourceFile, ptr: str, key: bool = False) -> None:
        line, col = src.position(ptr, key=key)
        self.diags.append(Diagnostic(code, message, src.display, line, col, ptr))

    # --- document-wide ------------------------------------------------------------
    def _place(self, src: SourceFile) -> str:
        """The file a limit is written in, relative to the spec's directory: ids must not
        depend on where the build runs from."""
        if self.root_dir is None:
            return Path(src.path).name
        return os.path.relpath(Path(src.path).resolve(), self.root_dir)

    def prepare(self, gw: dict, src: SourceFile) -> None:
        """The Redis settings, which the operations' fleet limits need before the plans are built."""
        self.root_dir = Path(src.path).resolve().parent
        self.redis = self._redis(gw["redis"], src) if "redis" in gw else None
        if "rate_limit" in gw:  # reported here even where every operation replaces it
            self.limits(gw["rate_limit"], src, "/x-gateway/rate_limit")

    def gateway(self, gw: dict, src: SourceFile, operation_ids: set, consumer_plans) -> Traffic:
        redis = self.redis
        plans = []
        for name in sorted(gw.get("plans") or {}):
            plan = self._plan(name, gw["plans"][name], src, "/x-gateway/plans/" + escape_pointer_token(name), operation_ids)
            if plan is not None:
                plans.append(plan)
        declared = set((gw.get("plans") or {}).keys())
        default_plan = gw.get("default_plan")
        if default_plan is not None and default_plan not in declared:
            self.error("GW092", f"default_plan {default_plan!r} is not a declared plan ({_known(declared)})", src, "/x-gateway/default_plan")
        if default_plan is not None and not declared:
            default_plan = None
        if consumer_plans is not None and declared:
            report, entries = consumer_plans
            for i, plan in entries:
                if plan and plan not in declared:
                    report("GW092", f"consumer plan {plan!r} is not declared in x-gateway.plans ({_known(declared)})", f"/consumers/{i}/plan")
        return Traffic(gw["rate_limit_headers"], gw["rate_limit_memory"], redis, tuple(plans), default_plan)

    def _redis(self, conf: dict, src: SourceFile) -> Redis:
        conf = with_defaults(conf, {"$ref": "traffic.json#/$defs/redis"})
        from .model import duration_ms  # model imports this module

        timeout = duration_ms(conf["timeout"])
        if timeout <= 0:
            self.error("GW090", "redis timeout must be above 0", src, "/x-gateway/redis/timeout")
        redis = Redis(conf.get("url"), tuple(conf.get("cluster") or ()), conf.get("password_env"), max(timeout, 1),
                      conf["pool"], conf["on_error"], conf["prefix"], conf["tls_verify"], conf.get("server_name"))
        urls = [("/x-gateway/redis/url", redis.url)] if redis.url else [
            (f"/x-gateway/redis/cluster/{i}", u) for i, u in enumerate(redis.cluster)]
        for ptr, url in urls:
            if not self.reachable(url, src, ptr):
                break
        return redis

    def _plan(self, name: str, conf: dict, src: SourceFile, ptr: str, operation_ids: set) -> Optional[Plan]:
        scope = conf.get("scope") or ("fleet" if self.redis is not None else "node")
        if scope == "fleet" and not self._fleet_ok(src, ptr + "/scope" if "scope" in conf else ptr):
            return None
        rate = None
        if "rate" in conf:
            rate = self._limit({"rate": conf["rate"], "burst": conf.get("burst"), "key": "consumer", "scope": scope,
                                "name": name}, src, ptr, ("plan", name))
        elif "burst" in conf:
            self.error("GW090", f"plan {name!r} has a burst but no rate", src, ptr + "/burst")
        quota = None
        if "quota" in conf:
            q = with_defaults(conf["quota"], {"$ref": "traffic.json#/$defs/quota"})
            if q["offset"] > _QUOTA_OFFSET_MAX[q["period"]]:
                self.error("GW090", f"a {q['period']} quota's offset is at most {_QUOTA_OFFSET_MAX[q['period']]}", src, ptr + "/quota/offset")
            else:
                # Quotas are counted in Redis whenever there is one: a quota is what a consumer pays for.
                quota_scope = "fleet" if self.redis is not None else "node"
                quota = Quota(limit_id("quota", name, q["period"], q["offset"]), f"{name}-quota", q["limit"], q["period"], q["offset"], quota_scope)
        overrides = []
        for op_id in sorted(conf.get("operations") or {}):
            optr = f"{ptr}/operations/{escape_pointer_token(op_id)}"
            if op_id not in operation_ids:
                self.error("GW092", f"plan {name!r} throttles operation {op_id!r}, which the document does not declare", src, optr, key=True)
                continue
            o = conf["operations"][op_id]
            limit = self._limit({"rate": o["rate"], "burst": o.get("burst"), "key": "consumer", "scope": scope,
                                 "name": f"{name}.{op_id}"}, src, optr, ("plan", name, op_id))
            if limit is not None:
                overrides.append((op_id, limit))
        return Plan(name, rate, quota, tuple(overrides))

    def _fleet_ok(self, src: SourceFile, ptr: str) -> bool:
        if self.redis is None:
            self.error("GW091", "scope fleet needs x-gateway.redis (a Redis every gateway of the fleet shares)", src, ptr)
            return False
        return True

    def _limit(self, conf: dict, src: SourceFile, ptr: str, place: tuple) -> Optional[RateLimit]:
        m = _RATE.match(conf["rate"])
        rate, per = int(m.group(1)), m.group(2)
        if rate == 0:
            self.error("GW090", "a rate of 0 admits nothing; remove the limit or deny the operation instead", src, ptr + "/rate")
            return None
        burst = conf.get("burst")
        if burst is None:
            burst = max(1, -(-rate // _PERIOD_S[per]))  # one second's worth
        key = conf.get("key") or "ip"
        kind, _, arg = key.partition(".")
        if kind == "header":
            arg = header_var(arg)
        scope = conf.get("scope") or "node"
        if scope == "fleet" and not self._fleet_ok(src, ptr + "/scope"):
            return None
        name = conf["name"]
        return RateLimit(limit_id(place, name, rate, per, burst, key, scope), name, rate, per, burst, kind, arg, scope)

    # --- per operation --------------------------------------------------------------
    def limits(self, value: Any, src: SourceFile, ptr: str) -> Optional[Tuple[RateLimit, ...]]:
        """The operation's `rate_limit`, written at src/ptr. Built once per place, so a root list is one set of buckets."""
        cache_key = (src.display, ptr, json.dumps(value, sort_keys=True))
        if cache_key in self._built:
            return self._built[cache_key]
        entries = value if isinstance(value, list) else [value]
        out: List[RateLimit] = []
        names: Dict[str, int] = {}
        failed = False
        for i, conf in enumerate(entries):
            iptr = f"{ptr}/{i}" if isinstance(value, list) else ptr
            conf = dict(conf)
            conf.setdefault("name", f"limit-{i + 1}")
            if conf["name"] in names:
                self.error("GW090", f"two limits here are named {conf['name']!r}", src, iptr + "/name" if "name" in entries[i] else iptr)
                failed = True
                continue
            names[conf["name"]] = i
            limit = self._limit(conf, src, iptr, (self._place(src), iptr))
            if limit is None:
                failed = True
            else:
                out.append(limit)
        result = None if failed else tuple(out)
        self._built[cache_key] = result
        return result


def _known(names) -> str:
    return "declared: " + ", ".join(sorted(names)) if names else "none declared"
