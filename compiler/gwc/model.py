"""Stage 3: the typed, frozen model of a gateway.

Every default and unit conversion is decided here, so templates only format.
Defaults come from the JSON Schemas (schema_defaults); this module never
repeats a default value.
"""
from __future__ import annotations

import copy
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from .diagnostics import Diagnostic, escape_pointer_token
from .load import Document, LoadError, SourceFile
from .paths import PathTemplate, parse_template, substitute_ok
from .resources import SCHEMA_BASE, schemas
from .schema_defaults import level_schema, with_defaults
from .security import NO_SECURITY, Access, Security, SecurityBuilder
from .status import StatusListener, build as build_status
from .traffic import NO_TRAFFIC, RateLimit, Traffic, TrafficBuilder
from .validation import aws_switches
from .validate import HTTP_METHODS, gateway_locations
from .waf import Waf, build as build_waf
from .cors import AWS_KEY as CORS_AWS_KEY, Cors, CorsBuilder, both_dialects_warning
from .response_cache import Cache, CacheBuilder, CacheZone
from .compression import Compression, CompressionBuilder

_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_SERVER_VAR = re.compile(r"\{([^{}]+)\}")


def duration_ms(value: Any) -> int:
    if isinstance(value, int):
        return value * 1000
    m = _DURATION.match(str(value))
    if not m:  # the schema already rejected it; keep the model total
        raise ValueError(f"bad duration {value!r}")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


@dataclass(frozen=True)
class Listen:
    host: str  # "" means every address
    port: int
    ipv6: bool = False

    @property
    def address(self) -> str:
        if not self.host:
            return str(self.port)
        return f"[{self.host}]:{self.port}" if self.ipv6 else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    ipv6: bool = False

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if self.ipv6 else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UpstreamTls:
    server_name: str
    sni: bool
    verify: bool
    ca_file: str
    verify_depth: int


@dataclass(frozen=True)
class Upstream:
    name: str
    ident: str  # the nginx upstream block name; never a user string
    scheme: str
    servers: Tuple[Server, ...]
    balance: str
    hash_variable: Optional[str]
    keepalive: int
    keepalive_timeout_ms: int
    connect_timeout_ms: int
    send_timeout_ms: int
    read_timeout_ms: int
    retry_tries: int  # total attempts, first one included
    retry_on: Tuple[str, ...]
    retry_non_idempotent: bool
    retry_timeout_ms: int
    max_fails: int
    fail_timeout_ms: int
    host_header: str
    preserve_host: bool
    tls: Optional[UpstreamTls]


@dataclass(frozen=True)
class Mock:
    status: int
    headers: Tuple[Tuple[str, str], ...]
    body: str
    content_type: str


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str  # upper case
    template: PathTemplate
    file: str
    pointer: str
    upstream: Optional[str]
    rewrite: Optional[str]
    mock: Optional[Mock]
    access: Access = Access(None)
    validate_parameters: bool = True
    validate_body: bool = True
    max_errors: int = 10
    max_body_size: Optional[str] = None  # None: the server's client_max_body_size
    declares_parameters: bool = False
    declares_body: bool = False
    # (in, name) of the header and query parameters, which can tell apart
    # operations that share a path and method.
    selectors: Tuple[Tuple[str, str], ...] = ()
    body_media_types: Tuple[str, ...] = ()  # requestBody content keys, lower case
    limits: Tuple[RateLimit, ...] = ()  # the effective `rate_limit` list
    waf: Optional[Waf] = None  # the effective `waf`; None: off
    cors: Optional[Cors] = None  # the effective `cors` (cors.py); None: off
    cache: Optional[Cache] = None  # the effective response cache (response_cache.py); None: not cached
    compression: Optional[Compression] = None  # the effective `compression` (compression.py); None: off

    @property
    def needs_validation(self) -> bool:
        return (self.validate_parameters and self.declares_parameters) or (self.validate_body and self.declares_body)

    @property
    def label(self) -> str:
        return f"{self.method} {self.template.text}"


@dataclass(frozen=True)
class Routing:
    encoded_slashes: str
    trailing_slash: str


@dataclass(frozen=True)
class NginxSettings:
    worker_processes: str
    worker_connections: int
    client_max_body_size: str
    server_tokens: bool
    resolver: Tuple[str, ...] = ()
    ca_bundle: str = ""


@dataclass(frozen=True)
class Gateway:
    title: str
    version: str
    openapi: str
    listen: Tuple[Listen, ...]
    base_paths: Tuple[str, ...]  # each serves the whole API; "" is the root
    routing: Routing
    nginx: NginxSettings
    upstreams: Tuple[Upstream, ...]
    operations: Tuple[Operation, ...]
    security: Security = NO_SECURITY
    traffic: Traffic = NO_TRAFFIC
    status: Optional[StatusListener] = None  # x-gateway.status
    cors: Optional[Cors] = None  # the root CORS policy (cors.py): the gateway's answers before routing carry it
    cache_zone: Optional[CacheZone] = None  # x-gateway.cache_zone, when some operation caches
    input_hashes: Tuple[Tuple[str, str], ...] = field(default=())

    def upstream(self, name: str) -> Upstream:
        return next(u for u in self.upstreams if u.name == name)


def deep_merge(outer: Any, inner: Any) -> Any:
    """Inner overrides outer: maps merge recursively, lists and scalars replace."""
    if isinstance(outer, dict) and isinstance(inner, dict):
        out = dict(outer)
        for k, v in inner.items():
            out[k] = deep_merge(out[k], v) if k in out else copy.deepcopy(v)
        return out
    return copy.deepcopy(inner)


class _Builder:
    def __init__(self, doc: Document):
        self.doc = doc
        self.diags: List[Diagnostic] = []
        self.security = SecurityBuilder(doc, self.diags)
        self.traffic = TrafficBuilder(self.diags, self.security.reachable)
        self.cors = CorsBuilder(self.diags)
        self.root_cors = (None, doc.root, "/x-gateway/cors")  # the root level of every operation's cors
        self.cache = CacheBuilder(self.diags)
        self.operation_ids: Dict[str, str] = {}  # every declared operation, built or not
        # Document-wide access settings, decided before the operations.
        self.root_requirements = None
        self.consumers = None
        self.mtls_ready = False

    def error(self, code: str, message: str, src: SourceFile, ptr: str, key: bool = False) -> None:
        line, col = src.position(ptr, key=key)
        self.diags.append(Diagnostic(code, message, src.display, line, col, ptr))

    # --- listen -----------------------------------------------------------------
    def listen(self, values: List[str], src: SourceFile, ptr: str) -> Tuple[Listen, ...]:
        out = []
        for i, raw in enumerate(values):
            item = parse_listen(raw)
            if isinstance(item, str):
                self.error("GW039", f"invalid listen address {raw!r}: {item}", src, f"{ptr}/{i}")
            else:
                out.append(item)
        return tuple(out)

    # --- upstreams --------------------------------------------------------------
    def upstream(self, index: int, name: str, conf: dict, src: SourceFile, ptr: str) -> Optional[Upstream]:
        servers: List[Server] = []
        schemes = set()
        for i, raw in enumerate(conf["servers"]):
            parsed = parse_server_url(raw)
            if isinstance(parsed, str):
                self.error("GW033", f"bad upstream URL {raw!r}: {parsed}", src, f"{ptr}/servers/{i}")
                continue
            scheme, server = parsed
            schemes.add(scheme)
            servers.append(server)
        if len(schemes) > 1:
            self.error("GW033", "all servers of one upstream must use the same scheme", src, f"{ptr}/servers")
            return None
        if not servers:
            return None
        scheme = schemes.pop()
        first = servers[0]
        default_port = 443 if scheme == "https" else 80
        host_header = conf.get("host_header") or (first.host if first.port == default_port else first.address)
        if first.ipv6 and not conf.get("host_header"):
            host_header = f"[{first.host}]" if first.port == default_port else first.address
        tls = None
        if scheme == "https":
            t = conf["tls"]
            server_name = t.get("server_name") or first.host
            tls = UpstreamTls(server_name, t["sni"], t["verify"], t["ca_file"], t["verify_depth"])
        retries = conf["retries"]
        hash_variable = _hash_variable(conf["hash_key"]) if conf["balance"] == "hash" else None
        return Upstream(
            name=name,
            ident=f"gw_upstream_{index}",
            scheme=scheme,
            servers=tuple(servers),
            balance=conf["balance"],
            hash_variable=hash_variable,
            keepalive=conf["keepalive"],
            keepalive_timeout_ms=duration_ms(conf["keepalive_timeout"]),
            connect_timeout_ms=duration_ms(conf["timeout"]["connect"]),
            send_timeout_ms=duration_ms(conf["timeout"]["send"]),
            read_timeout_ms=duration_ms(conf["timeout"]["read"]),
            retry_tries=retries["count"] + 1,
            retry_on=tuple(retries["on"]),
            retry_non_idempotent=retries["non_idempotent"],
            retry_timeout_ms=duration_ms(retries["timeout"]),
            max_fails=conf["max_fails"],
            fail_timeout_ms=duration_ms(conf["fail_timeout"]),
            host_header=host_header,
            preserve_host=conf["preserve_host"],
            tls=tls,
        )

    # --- base path ----------------------------------------------------------------
    def base_paths(self, gw: dict) -> Tuple[str, ...]:
        """x-gateway.base_path, or else the path of every server URL (variables
        at their defaults), in declaration order: the API is served under each."""
        if "base_path" in gw:
            return (_clean_base(gw["base_path"]),)
        data = self.doc.data
        servers = data.get("servers") or []
        paths: List[str] = []
        for server in servers if isinstance(servers, list) else []:
            if not isinstance(server, dict) or not isinstance(server.get("url"), str):
                continue
            url = server["url"]
            variables = server.get("variables") or {}

            def sub(m):
                var = variables.get(m.group(1)) if isinstance(variables, dict) else None
                return str(var.get("default", "")) if isinstance(var, dict) else ""

            url = _SERVER_VAR.sub(sub, url)
            path = urlsplit(url).path if "://" in url else url.split("?", 1)[0]
            path = _clean_base(path)
            if path not in paths:
                paths.append(path)
        return tuple(paths) or ("",)

    # --- mock -----------------------------------------------------------------------
    def mock(self, conf: dict, op: dict, src: SourceFile, op_ptr: str, conf_ptr: str) -> Optional[Mock]:
        status = conf["status"]
        headers = tuple(sorted((str(k), str(v)) for k, v in conf["headers"].items()))
        content_type = conf.get("content_type")
        if "body" in conf:
            body = conf["body"]
            if isinstance(body, str):
                text = body
                content_type = content_type or "text/plain; charset=utf-8"
            else:
                text = json.dumps(body, ensure_ascii=False, sort_keys=False)
                content_type = content_type or "application/json"
            return Mock(status, headers, text, content_type)
        found = self.find_example(op, src, op_ptr, status, conf.get("example"))
        if found is None:
            if conf.get("example"):
                self.error("GW035", f"no example named {conf['example']!r} under responses.{status} of this operation", src, conf_ptr + "/example")
                return None
            return Mock(status, headers, "", content_type or "text/plain; charset=utf-8")
        media_type, value = found
        if isinstance(value, str) and not media_type.endswith("json"):
            text = value
        else:
            text = json.dumps(value, ensure_ascii=False)
        return Mock(status, headers, text, content_type or media_type)

    def find_example(self, op: dict, src: SourceFile, op_ptr: str, status: int, name: Optional[str]):
        responses = op.get("responses") if isinstance(op.get("responses"), dict) else {}
        response = responses.get(str(status), responses.get(status))
        if response is None:
            return None
        try:
            response, rsrc, rptr = self.doc.deref(response, src, f"{op_ptr}/responses/{status}")
        except LoadError:
            return None
        content = response.get("content") if isinstance(response, dict) else None
        if not isinstance(content, dict):
            return None
        for media_type in sorted(content, key=lambda m: (not m.endswith("json"), m)):
            media = content[media_type]
            if not isinstance(media, dict):
                continue
            examples = media.get("examples") if isinstance(media.get("examples"), dict) else {}
            if name is not None:
                if name in examples:
                    try:
                        ex, _, _ = self.doc.deref(examples[name], rsrc, rptr)
                    except LoadError:
                        return None
                    if isinstance(ex, dict) and "value" in ex:
                        return media_type, ex["value"]
                continue
            if "example" in media:
                return media_type, media["example"]
            for ex_name in examples:
                try:
                    ex, _, _ = self.doc.deref(examples[ex_name], rsrc, rptr)
                except LoadError:
                    continue
                if isinstance(ex, dict) and "value" in ex:
                    return media_type, ex["value"]
        return None

    # --- operations -----------------------------------------------------------------
    def operations(self, root_gw: dict, upstream_names: set) -> Tuple[Operation, ...]:
        data = self.doc.data
        paths = data.get("paths") if isinstance(data.get("paths"), dict) else {}
        root_src = self.doc.root
        op_keys = _operation_keys()
        root_defaults = {k: v for k, v in root_gw.items() if k in op_keys}
        out: List[Operation] = []
        seen_ids: Dict[str, str] = self.operation_ids
        for path_key in paths:
            if path_key.startswith("x-"):
                continue  # a specification extension of the Paths object
            item_ptr = "/paths/" + escape_pointer_token(path_key)
            template = parse_template(path_key)  # validate.check_path_templates vetted every key
            try:
                item, src, ptr = self.doc.deref(paths[path_key], root_src, item_ptr)
            except LoadError as exc:
                self.diags.append(exc.diag)
                continue
            if not isinstance(item, dict):
                continue
            item_gw = item.get("x-gateway") if isinstance(item.get("x-gateway"), dict) else {}
            for method in HTTP_METHODS:
                op = item.get(method)
                if not isinstance(op, dict):
                    continue
                op_ptr = f"{ptr}/{method}"
                op_gw = op.get("x-gateway") if isinstance(op.get("x-gateway"), dict) else {}
                merged = deep_merge(deep_merge(root_defaults, item_gw), op_gw)
                merged = with_defaults(merged, level_schema("operation"))
                gw_ptr = f"{op_ptr}/x-gateway"
                op_id = op.get("operationId") if isinstance(op.get("operationId"), str) else f"{method.upper()} {path_key}"
                if op_id in seen_ids:
                    self.error("GW030", f"duplicate operationId {op_id!r} (also used by {seen_ids[op_id]})", src, f"{op_ptr}/operationId")
                    continue
                seen_ids[op_id] = f"{method.upper()} {path_key}"
                mock = None
                upstream = None
                if "mock" in merged:
                    mock = self.mock(with_defaults(merged["mock"], {"$ref": "mock.json"}), op, src, op_ptr, gw_ptr + "/mock")
                    if mock is None:
                        continue
                elif "upstream" in merged:
                    upstream = merged["upstream"]
                    if upstream not in upstream_names:
                        known = ", ".join(sorted(upstream_names)) or "none declared"
                        where = gw_ptr + "/upstream" if "upstream" in op_gw else (ptr + "/x-gateway/upstream" if "upstream" in item_gw else "/x-gateway/upstream")
                        wsrc = src if where != "/x-gateway/upstream" else root_src
                        self.error("GW032", f"unknown upstream {upstream!r} for {method.upper()} {path_key} (known: {known})", wsrc, where)
                        continue
                else:
                    self.error("GW036", f"{method.upper()} {path_key} has no integration: set x-gateway.upstream or x-gateway.mock", src, op_ptr)
                    continue
                access = self.access(op, item, merged, src, op_ptr, f"{method.upper()} {path_key}")
                if access is None:
                    continue
                validate = dict(merged["validate"])
                aws = aws_switches(self.doc, op_ptr) if src is root_src else None
                if aws is not None:  # AWS request validators can only turn validation off
                    validate["parameters"] = validate["parameters"] and aws[0]
                    validate["body"] = validate["body"] and aws[1]
                limits: Tuple[RateLimit, ...] = ()
                if "rate_limit" in merged:
                    built = self.traffic.limits(merged["rate_limit"], *self._innermost("rate_limit", op, item, src, op_ptr))
                    if built is None:
                        continue
                    limits = built
                waf = None
                if merged.get("waf") not in (None, False):
                    body_limit = merged.get("max_body_size") or root_gw["nginx"]["client_max_body_size"]
                    limit_name = "max_body_size" if merged.get("max_body_size") else "nginx.client_max_body_size"
                    ok, waf = build_waf(merged["waf"], *self._innermost("waf", op, item, src, op_ptr), self.diags,
                                        method.upper(), self.body_media_types(op, src), body_limit, limit_name)
                    if not ok:
                        continue
                ok, compression = self.compression.operation(op_gw.get("compression"), item_gw.get("compression"), src, op_ptr, deep_merge)
                if not ok:
                    continue
                cache = None
                if mock is None and merged.get("cache") not in (None, False):
                    ok, cache = self.cache.build(
                        merged["cache"], self._cache_where(op, item, src, op_ptr), method.upper(),
                        "cache" in op_gw, lambda where, name, _o=op, _i=item, _s=src: self.declares(_o, _i, _s, where, name),
                        template.params, access.requirements, access.authorizer)
                    if not ok:
                        continue
                ok, cors = self.cors.build((self.root_cors, (item_gw.get("cors"), src, f"{ptr}/x-gateway/cors"),
                                            (op_gw.get("cors"), src, f"{gw_ptr}/cors")),
                                           tuple(m.upper() for m in HTTP_METHODS if isinstance(item.get(m), dict)))
                if not ok:
                    continue
                rewrite = merged.get("path")
                if rewrite is not None:
                    missing = substitute_ok(rewrite, template.params)
                    if missing is not None:
                        self.error("GW034", f"rewrite {rewrite!r} uses {{{missing}}}, which is not a parameter of {path_key}", src, gw_ptr + "/path")
                        continue
                out.append(
                    Operation(
                        op_id, method.upper(), template, src.display, op_ptr, upstream, rewrite, mock,
                        access=access,
                        validate_parameters=validate["parameters"],
                        validate_body=validate["body"],
                        max_errors=validate["max_errors"],
                        max_body_size=merged.get("max_body_size"),
                        declares_parameters=bool(op.get("parameters")) or bool(item.get("parameters")),
                        declares_body=isinstance(op.get("requestBody"), dict),
                        selectors=self.selectors(op, item, src),
                        body_media_types=self.body_media_types(op, src),
                        limits=limits,
                        waf=waf,
                        cors=cors,
                        cache=cache,
                        compression=compression,
                    )
                )
        return tuple(out)

    def parameters(self, op: dict, item: dict, src: SourceFile):
        """The (in, name) of each readable parameter of the path item, then of the operation."""
        for params in (item.get("parameters"), op.get("parameters")):
            for p in params if isinstance(params, list) else ():
                try:
                    p, _, _ = self.doc.deref(p, src, "")
                except LoadError:
                    continue  # reported where the parameters are validated
                if isinstance(p, dict) and isinstance(p.get("in"), str) and isinstance(p.get("name"), str):
                    yield p["in"], p["name"]

    def selectors(self, op: dict, item: dict, src: SourceFile) -> Tuple[Tuple[str, str], ...]:
        return tuple(sorted({(where, name) for where, name in self.parameters(op, item, src) if where in ("header", "query")}))

    def declares(self, op: dict, item: dict, src: SourceFile, where: str, name: str) -> bool:
        """Whether the operation or its path item declares parameter `name` in `where` (header names ignore case)."""
        return any(w == where and (n == name or (where == "header" and n.lower() == name.lower()))
                   for w, n in self.parameters(op, item, src))

    def _cache_where(self, op: dict, item: dict, src: SourceFile, op_ptr: str):
        """Where cache.<member> is written, innermost level first (for located cache diagnostics)."""
        levels = [(op.get("x-gateway"), src, f"{op_ptr}/x-gateway/cache"),
                  (item.get("x-gateway"), src, f"{op_ptr.rsplit('/', 1)[0]}/x-gateway/cache"),
                  (self.doc.data.get("x-gateway"), self.doc.root, "/x-gateway/cache")]

        def where(member: str) -> Tuple[SourceFile, str]:
            first = member.split("/", 1)[0]
            for gw, lsrc, ptr in levels:
                conf = gw.get("cache") if isinstance(gw, dict) else None
                if conf is not None and (not first or (isinstance(conf, dict) and first in conf)):
                    return lsrc, f"{ptr}/{member}" if member else ptr
            return levels[0][1], levels[0][2]
        return where

    def body_media_types(self, op: dict, src: SourceFile) -> Tuple[str, ...]:
        try:
            body, _, _ = self.doc.deref(op.get("requestBody"), src, "")
        except LoadError:
            return ()
        content = body.get("content") if isinstance(body, dict) else None
        return tuple(sorted({k.split(";", 1)[0].strip().lower() for k in content if isinstance(k, str)})) if isinstance(content, dict) else ()

    # --- access policy ----------------------------------------------------------
    def _innermost(self, key: str, op: dict, item: dict, src: SourceFile, op_ptr: str) -> Tuple[SourceFile, str]:
        """Where the merged x-gateway `key` comes from: the operation, its path item, or the root."""
        if key in (op.get("x-gateway") or {}):
            return src, f"{op_ptr}/x-gateway/{key}"
        if key in (item.get("x-gateway") or {}):
            return src, f"{op_ptr.rsplit('/', 1)[0]}/x-gateway/{key}"
        return self.doc.root, f"/x-gateway/{key}"

    def access(self, op: dict, item: dict, merged: dict, src: SourceFile, op_ptr: str, label: str) -> Optional[Access]:
        """The operation's requirements, authorizer and IP rules; None after an error."""
        sec = self.security
        if "security" in op:
            requirements = sec.requirements(op["security"], src, op_ptr + "/security")
            if requirements is None and isinstance(op["security"], list):
                return None
        elif isinstance(self.doc.data.get("security"), list):
            requirements = self.root_requirements
            if requirements is None:
                return None
        else:
            requirements = None
        authorizer = None
        if "authorizer" in merged:
            authorizer = sec.authorizer(merged["authorizer"], *self._innermost("authorizer", op, item, src, op_ptr))
            if authorizer is None:
                return None
        ip = sec.ip_policy(merged["ip"]) if "ip" in merged else None
        if requirements is None and authorizer is None and sec.declared:
            self.error(
                "GW040",
                f"{label} has no security requirement, but the document declares "
                "security schemes; add `security` to it or to the document, or `security: []` to make it public",
                src, op_ptr,
            )
            return None
        for req in requirements or ():
            for name, _ in req:
                scheme = sec.schemes[name]
                if scheme.kind == "mtls" and not self.mtls_ready:
                    self.error("GW048", f"security scheme {name!r} is mutualTLS, but x-gateway.tls has no client_ca", src, op_ptr)
                    return None
                if scheme.kind == "apikey" and self.consumers is None:
                    self.error("GW049", f"security scheme {name!r} is an API key, but x-gateway.keys names no key file", src, op_ptr)
                    return None
        return Access(requirements, authorizer, ip)


def _operation_keys() -> set:
    return set(schemas()[SCHEMA_BASE + "x-gateway.json"]["$defs"]["operation"]["properties"])


def _hash_variable(key: str) -> str:
    """The nginx variable for a hash key; the schema pattern guarantees a safe name."""
    if key == "client_ip":
        return "$remote_addr"
    if key == "path":
        return "$uri"
    kind, _, name = key.partition(".")
    if kind == "header":
        return "$http_" + name.lower().replace("-", "_")
    if kind == "query":
        return "$arg_" + name
    return "$cookie_" + name


def _clean_base(path: str) -> str:
    path = path.rstrip("/")
    if path and not path.startswith("/"):
        path = "/" + path
    return path


def parse_listen(raw: Any):
    """Listen or an error string."""
    if not isinstance(raw, str):
        return "not a string"
    text = raw.strip()
    if text.isdigit():
        host, port_text, ipv6 = "", text, False
    elif text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            return "expected [IPv6]:PORT"
        host, port_text, ipv6 = text[1:end], text[end + 2 :], True
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "not an IPv6 address"
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            return "expected HOST:PORT or PORT"
        ipv6 = False
        if host == "*":
            host = ""
        elif not _is_host(host):
            return "not an IPv4 address or host name"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return "port must be 1-65535"
    return Listen(host, int(port_text), ipv6)


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        return False


def _is_host(host: str) -> bool:
    """An IPv4 address or a DNS name; all-numeric names must be valid IPv4."""
    if re.fullmatch(r"[0-9.]+", host):
        return _is_ipv4(host)
    return bool(_HOSTNAME.match(host))


def parse_server_url(raw: Any):
    """(scheme, Server) or an error string."""
    if not isinstance(raw, str):
        return "not a string"
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in raw):
        return "URLs may not contain spaces or control characters"
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if parts.username or parts.password:
        return "credentials in URLs are not allowed"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "an upstream URL has no path, query or fragment; use x-gateway.path to rewrite paths"
    host = parts.hostname or ""
    ipv6 = False
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "invalid IPv6 address"
        ipv6 = True
    elif not _is_host(host):
        return f"invalid host {host!r}"
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    if not 0 < port < 65536:
        return "port must be 1-65535"
    return parts.scheme, Server(host, port, ipv6)


def _consumer_plans(sec: SecurityBuilder, sec_consumers, gw: dict, root: SourceFile):
    """The key file's (index, plan) pairs and a reporter located in that file, for the plan check."""
    if "keys" not in gw or not gw.get("plans") or sec_consumers is None:
        return None
    side = sec.side_file(gw["keys"], root, "/x-gateway/keys")
    entries = side.data.get("consumers") if side is not None and isinstance(side.data, dict) else None
    if not isinstance(entries, list):
        return None
    pairs = [(i, e.get("plan")) for i, e in enumerate(entries) if isinstance(e, dict) and isinstance(e.get("plan"), str)]
    return (lambda code, msg, ptr: sec.error(code, msg, side, ptr)), pairs


def build(doc: Document, listen_override: Optional[List[str]] = None) -> Tuple[Optional[Gateway], List[Diagnostic]]:
    b = _Builder(doc)
    data = doc.data
    raw_gw = data.get("x-gateway") if isinstance(data.get("x-gateway"), dict) else {}
    gw = with_defaults(raw_gw, level_schema("root"))
    root = doc.root
    if listen_override:
        listen = b.listen(list(listen_override), root, "/x-gateway/listen")
    else:
        listen = b.listen(gw["listen"], root, "/x-gateway/listen")
    upstreams = []
    for index, (name, conf) in enumerate(sorted(gw["upstreams"].items()), start=1):
        up = b.upstream(index, name, conf, root, "/x-gateway/upstreams/" + escape_pointer_token(name))
        if up is not None:
            upstreams.append(up)
    declared = set(gw["upstreams"])
    if "upstream" in raw_gw and raw_gw["upstream"] not in declared:
        known = ", ".join(sorted(declared)) or "none declared"
        b.error("GW032", f"unknown upstream {raw_gw['upstream']!r} (known: {known})", root, "/x-gateway/upstream")
        declared = declared | {raw_gw["upstream"]}  # report it once, not per operation
    base_paths = b.base_paths(gw)
    sec = b.security
    sec.has_resolver = bool(gw["nginx"]["resolver"])
    sec.check_ip_rules(gateway_locations(doc))
    sec.build_schemes()
    b.cache.set_schemes(sec.schemes.values())
    b.root_requirements = sec.requirements(data.get("security"), root, "/security")
    b.consumers = sec.consumers(gw["keys"], root, "/x-gateway/keys") if "keys" in gw else None
    tls = sec.tls(gw["tls"], root, "/x-gateway/tls", b.listen) if "tls" in gw else None
    b.mtls_ready = bool(tls and tls.client_ca)
    trusted = sec.cidrs(gw["trusted_proxies"], root, "/x-gateway/trusted_proxies") or ()
    b.traffic.prepare(gw, root)
    b.compression = CompressionBuilder(data, raw_gw, root, b.diags)
    aws_cors = b.cors.aws(data, root)
    if "cors" in raw_gw:
        b.root_cors = (raw_gw["cors"], root, "/x-gateway/cors")
        if aws_cors is not None:
            both_dialects_warning(root, b.diags)
    elif aws_cors is not None:
        b.root_cors = (aws_cors, root, "/" + CORS_AWS_KEY)
    _, root_cors = b.cors.build((b.root_cors,), None)
    operations = b.operations(gw, declared)
    traffic = b.traffic.gateway(gw, root, set(b.operation_ids), _consumer_plans(sec, b.consumers, gw, root))
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    routing = gw["routing"]
    ngx = gw["nginx"]
    gateway = Gateway(
        title=str(info.get("title", "")),
        version=str(info.get("version", "")),
        openapi=str(data.get("openapi")),
        listen=listen,
        base_paths=base_paths,
        routing=Routing(routing["encoded_slashes"], routing["trailing_slash"]),
        nginx=NginxSettings(
            str(ngx["worker_processes"]), ngx["worker_connections"], ngx["client_max_body_size"], ngx["server_tokens"],
            tuple(ngx["resolver"]), ngx["ca_bundle"],
        ),
        upstreams=tuple(upstreams),
        operations=operations,
        security=Security(tuple(sec.schemes[n] for n in sorted(sec.schemes)), b.consumers, trusted, tls),
        traffic=traffic,
        cors=root_cors,
        status=build_status(raw_gw.get("status"), root, b.diags, listen + (tls.listen if tls else ()), parse_listen, sec.cidrs),
        cache_zone=b.cache.zone(raw_gw.get("cache_zone"), root) if (b.cache.used or "cache_zone" in raw_gw) else None,
        input_hashes=tuple(doc.input_hashes().items()),
    )
    return gateway, b.diags
