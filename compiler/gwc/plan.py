"""Stage 4: route precedence, ambiguity, and the dispatch data for the runtime.

Routing runs in Lua over a trie of path segments that is built from the data
this stage produces, so dispatch cost does not grow with the number of
routes. Each operation then jumps to an internal exact-match location, which
nginx finds in its static location tree.
"""
from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

from .diagnostics import Diagnostic
from .model import Gateway, Operation, Upstream
from .security import IpPolicy
from .traffic import NATIVE_KEYS, RateLimit
from .selection import Choice, choice_data, expects, route_diag, select
from .waf import Waf, effective_body_limit
from .cors import CorsLocation, CorsPlan, plan_cors
from .paths import GREEDY, LITERAL, MIXED, PARAM, PathTemplate, lua_pattern, templates_overlap
from .diagnostics import WARNING

METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


@dataclass(frozen=True)
class Location:
    """One internal location. Operations whose location settings are equal share one."""

    ident: str
    kind: str  # "proxy" or "mock"
    upstream: Optional[Upstream]
    lua_access: bool = False  # auth or validation runs in access_by_lua
    max_body_size: Optional[str] = None
    ip_variable: Optional[str] = None  # the geo variable of the location's IP policy: "1" allows
    body_buffer_size: str = "1m"  # the effective body limit, so validated bodies stay in memory
    native_limits: Tuple[RateLimit, ...] = ()  # enforced by nginx's limit_req
    rate_headers: str = "none"  # the rate-limit response headers its operations send (ietf, legacy, both, none)
    waf: Optional[Waf] = None  # ModSecurity + CRS in this location (docs/waf.md); None: no modsecurity directive
    cors: Optional[object] = None  # the CORS policy of its operations (cors.py); None: no CORS headers
    cache: Optional[object] = None  # the response cache (response_cache.py); None: not cached
    compression: Optional[object] = None  # response compression (compression.py); None: off

    @property
    def has_response_headers(self) -> bool:
        """Whether the location adds response headers of its own (which replace the server's add_header)."""
        return self.rate_headers != "none" or bool(self.cors or self.cache or self.compression)

    @property
    def native_retry_after(self) -> int:
        return max(limit.retry_after_s for limit in self.native_limits)


@dataclass(frozen=True)
class LimitZone:
    """One limit_req_zone: a node-scope limit nginx enforces by itself."""

    name: str
    key: str
    rate: str
    size: str


@dataclass(frozen=True)
class IpGeo:
    """One distinct IP policy as an nginx `geo` map of the client address.

    geo picks the longest matching prefix, while the policy says deny wins
    over allow; an allowed block inside a denied one is therefore dropped,
    which makes the two agree (a denied block inside an allowed one is
    already more specific)."""

    variable: str
    default: int
    entries: Tuple[Tuple[str, int], ...]  # (CIDR, 1 allow / 0 deny)

    @classmethod
    def of(cls, variable: str, policy: IpPolicy) -> "IpGeo":
        deny = [ipaddress.ip_network(c) for c in policy.deny]
        allow = [ipaddress.ip_network(c) for c in policy.allow]
        kept_allow = [a for a in allow if not any(a.version == d.version and a.subnet_of(d) for d in deny)]
        entries = {str(n): 1 for n in kept_allow}
        entries.update({str(n): 0 for n in deny})
        return cls(variable, 0 if policy.allow else 1, tuple(sorted(entries.items())))


@dataclass(frozen=True)
class Route:
    template: PathTemplate
    methods: Tuple[Tuple[str, int], ...]  # (METHOD, operation index): the only, or the fallback, operation
    # (METHOD, choices in the order tried, fallback operation index or -1 for a 400)
    selected: Tuple[Tuple[str, Tuple[Choice, ...], int], ...] = ()

    @property
    def allow(self) -> str:
        methods = {m for m, _ in self.methods} | {m for m, _, _ in self.selected}
        if "GET" in methods:
            methods.add("HEAD")
        return ", ".join(m for m in METHOD_ORDER if m in methods)


@dataclass(frozen=True)
class Plan:
    gateway: Gateway
    locations: Tuple[Location, ...]
    operation_locations: Tuple[str, ...]
    routes: Tuple[Route, ...]
    ip_geos: Tuple[IpGeo, ...] = ()
    validators_lua: Optional[str] = None  # the generated request validators, when any
    limit_zones: Tuple[LimitZone, ...] = ()
    cors: Optional[CorsPlan] = None  # the numbered CORS policies and preflight answers (cors.py)

    @property
    def uses_lua_limits(self) -> bool:
        """Whether any operation's limits or plans run in Lua (the gwc_limits shared dict)."""
        return any(lua_limits(op, self.gateway) or plans_apply(op, self.gateway) for op in self.gateway.operations)

    @property
    def rate_headers(self) -> str:
        """The header mode the error location emits: the gateway's own errors carry the limit headers too."""
        return self.gateway.traffic.headers if self.uses_lua_limits else "none"

    def route_data(self) -> dict:
        """JSON-ready dispatch data consumed by lua/gwc/router.lua."""
        ops = []
        cached = {loc.ident for loc in self.locations if loc.cache}
        for op, loc in zip(self.gateway.operations, self.operation_locations):
            entry = {"id": op.operation_id, "loc": loc}
            if loc in cached:
                entry["cache"] = True  # the router sets $gw_cache_gen, the key's generation part
            if op.needs_validation and op.template.params:
                entry["keep_path"] = True  # validation re-reads the path parameters
            if op.rewrite is not None:
                entry["rewrite"] = _rewrite_parts(op)
            if op.mock is not None:
                entry["mock"] = {
                    "status": op.mock.status,
                    "headers": [[k, v] for k, v in op.mock.headers],
                    "content_type": op.mock.content_type,
                    "body": op.mock.body,
                }
            if self.cors is not None and (self.cors.op_index[len(ops)] or self.cors.root_index):
                entry["cors"] = str(self.cors.op_index[len(ops)])  # $gw_cors: 0 is none, not the root's
            ops.append(entry)
        routes = []
        for r in self.routes:
            methods: dict = {m: i + 1 for m, i in r.methods}
            for m, choices, fallback in r.selected:
                methods[m] = {
                    "choices": [choice_data(c) for c in choices],
                    "fallback": fallback + 1 if fallback >= 0 else False,
                    "expects": expects(choices),
                }
            routes.append(
                {
                    "path": r.template.text,
                    "params": list(r.template.params),
                    "methods": methods,
                    "allow": r.allow,
                }
            )
            if self.cors is not None and self.cors.route_preflight[len(routes) - 1] is not None:
                routes[-1]["preflight"] = self.cors.route_preflight[len(routes) - 1]
                if self.cors.route_index[len(routes) - 1]:
                    routes[-1]["cors"] = str(self.cors.route_index[len(routes) - 1])
        return {
            # Longest first, so a base path wins over one it extends.
            "base_paths": sorted(self.gateway.base_paths, key=lambda b: (-len(b), b)),
            "encoded_slashes": self.gateway.routing.encoded_slashes,
            "trailing_slash": self.gateway.routing.trailing_slash,
            "operations": ops,
            "routes": routes,
            "tree": _build_tree(self.routes),
        }

    @property
    def selects_by_request(self) -> bool:
        """Whether some path and method picks its operation by header or query (the 400 of gw:e400s)."""
        return any(r.selected for r in self.routes)

    @property
    def forwarded_headers(self) -> Tuple[str, ...]:
        """Headers only the gateway may set upstream: stripped from every client request."""
        names = {h.lower(): h for h in self.gateway.security.forwarded_headers}
        for op in self.gateway.operations:
            if op.access.authorizer is not None:
                names.update({h.lower(): h for h in op.access.authorizer.forward_headers})
        return tuple(names[k] for k in sorted(names))

    def access_data(self) -> dict:
        """JSON-ready policy consumed by lua/gwc/access.lua."""
        schemes = {s.name: _scheme_data(s) for s in self.gateway.security.schemes}
        operations = {}
        for op in self.gateway.operations:
            if not needs_lua_access(op, self.gateway):
                continue
            entry: dict = {}
            if op.access.requirements:
                entry["requirements"] = [[[name, list(scopes)] for name, scopes in req] for req in op.access.requirements]
            if op.access.authorizer is not None:
                a = op.access.authorizer
                entry["authorizer"] = {
                    "url": a.url, "scheme": a.scheme, "host": a.host, "port": a.port, "path": a.path,
                    "identity": list(a.identity), "ttl": a.ttl_s, "timeout": a.timeout_ms,
                    "forward_headers": list(a.forward_headers),
                }
            if op.needs_validation:
                entry["validate"] = True
                entry["path_params"] = list(op.template.params)
            limits = lua_limits(op, self.gateway)
            if limits:
                entry["limits"] = [limit.data() for limit in limits]
            if plans_apply(op, self.gateway):
                entry["plans"] = True
            operations[op.operation_id] = entry
        out = {"schemes": schemes, "operations": operations, "forward_headers": list(self.forwarded_headers)}
        if self.uses_lua_limits:
            out["traffic"] = self.gateway.traffic.data()
        return out


def lua_limits(op: Operation, gateway: Gateway) -> Tuple[RateLimit, ...]:
    headers = gateway.traffic.headers
    return tuple(limit for limit in op.limits if not limit.native(headers))


def native_limits(op: Operation, gateway: Gateway) -> Tuple[RateLimit, ...]:
    headers = gateway.traffic.headers
    return tuple(limit for limit in op.limits if limit.native(headers))


def plans_apply(op: Operation, gateway: Gateway) -> bool:
    """Plans limit consumers, so they apply where an operation authenticates one."""
    return gateway.traffic.has_plans and bool(op.access.requirements)


def needs_lua_access(op: Operation, gateway: Gateway) -> bool:
    return op.access.needs_lua or op.needs_validation or bool(lua_limits(op, gateway)) or plans_apply(op, gateway)


def _scheme_data(s) -> dict:
    out: dict = {"kind": s.kind, "hide": s.hide_credentials}
    if s.source is not None:
        out["source"] = {"in": s.source.location, "name": s.source.name, "bearer": s.source.bearer}
    if s.jwt is not None:
        j = s.jwt
        out.update(
            issuer=j.issuer, audiences=list(j.audiences), algorithms=list(j.algorithms), leeway=j.leeway_s,
            required_claims=list(j.required_claims), forward_claims=[list(p) for p in j.forward_claims],
            cache_size=j.cache_size, max_token_size=j.max_token_size, jwks=j.jwks, jwks_uri=j.jwks_uri,
            discovery=j.discovery, secret_env=j.secret_env, refresh=j.refresh_s, min_refetch=j.min_refetch_s,
            refetch_burst=j.refetch_burst, plan_claim=j.plan_claim,
        )
    if s.kind == "basic":
        out.update(realm=s.realm, users=dict(s.users))
    if s.kind == "mtls":
        out.update(subject_header=s.subject_header, fingerprint_header=s.fingerprint_header)
    return {k: v for k, v in out.items() if v is not None}  # JSON null would reach Lua as a truthy userdata


def _rewrite_parts(op: Operation) -> list:
    """The rewrite template as literal strings and 1-based capture indexes."""
    params = op.template.params
    parts: list = []
    pos = 0
    text = op.rewrite or ""
    for m in re.finditer(r"\{([^{}]*)\}", text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        parts.append(params.index(m.group(1)) + 1)
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return parts


def _new_node() -> dict:
    return {}


def _build_tree(routes: Tuple[Route, ...]) -> dict:
    """A trie over segments. Keys: lit (map), mixed (list, most specific first), param, greedy, route."""
    root: dict = _new_node()
    for index, route in enumerate(routes, start=1):
        node = root
        for seg in route.template.segments:
            if seg.kind == LITERAL:
                node = node.setdefault("lit", {}).setdefault(seg.parts[0], _new_node())
            elif seg.kind == PARAM:
                node = node.setdefault("param", _new_node())
            elif seg.kind == MIXED:
                pattern = lua_pattern(seg)
                mixed = node.setdefault("mixed", [])
                found = next((m for m in mixed if m["pattern"] == pattern), None)
                if found is None:
                    found = {"pattern": pattern, "captures": len(seg.params), "rank": seg.literal_chars, "node": _new_node()}
                    mixed.append(found)
                node = found["node"]
            elif seg.kind == GREEDY:
                node["greedy"] = index
                node = None
                break
        if node is not None:
            node["route"] = index
    _sort_mixed(root)
    return root


def _sort_mixed(node: dict) -> None:
    if "mixed" in node:
        node["mixed"].sort(key=lambda m: (-m["rank"], m["pattern"]))
        for m in node["mixed"]:
            del m["rank"]
            _sort_mixed(m["node"])
    for child in node.get("lit", {}).values():
        _sort_mixed(child)
    if "param" in node:
        _sort_mixed(node["param"])


def plan(gateway: Gateway) -> Tuple[Optional[Plan], List[Diagnostic]]:
    diags: List[Diagnostic] = []
    # One route per shape: OpenAPI forbids templates that differ only in
    # parameter names, but descriptions publish them on disjoint methods, and
    # each operation reads its parameters by position under its own names.
    by_shape: Dict[str, List[int]] = defaultdict(list)
    for i, op in enumerate(gateway.operations):
        by_shape[op.template.shape()].append(i)
    warned_fragments = set()
    routes = []
    for indexes in by_shape.values():
        ops = [gateway.operations[i] for i in indexes]
        for op in ops:
            if op.template.key != op.template.text and op.template.key not in warned_fragments:
                warned_fragments.add(op.template.key)
                what = "a fragment, which never reaches a server" if op.template.fragment is not None else "a query"
                diags.append(route_diag(
                    "GW080", f"path {op.template.key!r} has {what}: routed as {op.template.text!r}, "
                    "and it selects the operation only where another shares the path and method", op, WARNING))
        texts = sorted({op.template.text for op in ops})
        if len(texts) > 1:
            diags.append(route_diag(
                "GW081", f"paths {', '.join(repr(t) for t in texts)} differ only in parameter names, which OpenAPI "
                "does not allow; each operation is routed by its method and keeps its own parameter names", ops[-1], WARNING))
        by_method: Dict[str, List[int]] = defaultdict(list)
        for i in indexes:
            by_method[gateway.operations[i].method].append(i)
        methods = []
        selected = []
        for method, candidates in by_method.items():
            if len(candidates) == 1:
                methods.append((method, candidates[0]))
                continue
            choice = select(gateway, method, candidates, diags)
            if choice is not None:
                selected.append((method,) + choice)
        order = lambda mi: METHOD_ORDER.index(mi[0]) if mi[0] in METHOD_ORDER else 99  # noqa: E731
        routes.append(Route(ops[0].template, tuple(sorted(methods, key=order)), tuple(sorted(selected, key=order))))
    routes.sort(key=lambda r: (r.template.precedence(), r.template.text))

    # Two routes of equal precedence that can match one request would make the
    # winner depend on declaration order, so they are an error.
    # Equal precedence means equal segment kinds, so literal segments must also
    # be equal text to overlap: bucketing on them keeps this near-linear.
    groups: Dict[tuple, List[Route]] = defaultdict(list)
    for r in routes:
        literals = tuple(s.parts[0] if s.kind == LITERAL else None for s in r.template.segments)
        groups[(r.template.precedence(), literals)].append(r)
    for group in groups.values():
        for a_i in range(len(group)):
            for b_i in range(a_i + 1, len(group)):
                a, b = group[a_i], group[b_i]
                if templates_overlap(a.template, b.template):
                    op_a = gateway.operations[(a.methods or [(m, c[0].op) for m, c, _ in a.selected])[0][1]]
                    diags.append(
                        Diagnostic(
                            "GW031",
                            f"ambiguous routes: {a.template.text!r} and {b.template.text!r} can match the same request "
                            "with equal precedence; make one of them more specific",
                            op_a.file,
                            pointer=op_a.pointer.rsplit("/", 1)[0],
                        )
                    )
    if any(d.is_error for d in diags):
        return None, diags

    geos: Dict[IpPolicy, IpGeo] = {}
    for op in gateway.operations:
        if op.access.ip is not None and op.access.ip not in geos:
            geos[op.access.ip] = IpGeo.of(f"$gw_ip_{len(geos) + 1}", op.access.ip)
    cors = plan_cors(gateway, routes, lambda op: geos[op.access.ip].variable if op.access.ip is not None else None, diags)
    if any(d.is_error for d in diags):
        return None, diags
    locations: List[Location] = []
    index_of: Dict[tuple, str] = {}
    op_locs = []
    zones: Dict[str, LimitZone] = {}
    for op in gateway.operations:
        lua_access = needs_lua_access(op, gateway)
        kind = "mock" if op.mock is not None else "proxy"
        native = native_limits(op, gateway)
        for limit in native:
            zones.setdefault(limit.id, LimitZone(f"gwl_{limit.id}", NATIVE_KEYS[limit.key], limit.nginx_rate(), gateway.traffic.memory))
        rate_headers = gateway.traffic.headers if (lua_limits(op, gateway) or plans_apply(op, gateway)) else "none"
        body_limit = effective_body_limit(op.waf, op.max_body_size, gateway.nginx.client_max_body_size)
        key = (kind, op.upstream if kind == "proxy" else None, lua_access, body_limit, op.access.ip, native, rate_headers, op.waf, op.compression, op.cache)
        cors_index = cors.op_index[len(op_locs)] if cors is not None else 0
        key += (cors_index,)  # $gw_cors comes from the router; never two policies in one location
        if key not in index_of:
            ident = str(len(locations) + 1)
            index_of[key] = ident
            up = gateway.upstream(op.upstream) if kind == "proxy" else None
            buffer = body_limit or gateway.nginx.client_max_body_size
            ip_variable = geos[op.access.ip].variable if op.access.ip is not None else None
            locations.append(Location(ident, kind, up, lua_access, body_limit, ip_variable, buffer, native, rate_headers, op.waf, compression=op.compression, cache=op.cache))
            if cors_index:
                locations[-1] = replace(locations[-1], cors=CorsLocation(cors_index))
        op_locs.append(index_of[key])
    return Plan(gateway, tuple(locations), tuple(op_locs), tuple(routes), tuple(geos.values()),
                limit_zones=tuple(zones[k] for k in sorted(zones)), cors=cors), diags
