"""Stage 3 and 4, cross-origin resource sharing (x-gateway.cors, x-amazon-apigateway-cors).

The model half turns an operation's merged `cors` value into a frozen Cors
(origins checked and lower-cased, defaults from schemas/cors.json); the plan
half numbers the distinct policies, resolves each path's preflight answer and
produces the data templates/macros.j2 formats (docs/cors.md):

- actual requests are answered natively: one http-level map of
  "$gw_cors|$http_origin" gives the allowed origin or "" (add_header skips
  empty values, so a refused origin gets no CORS header at all); the router
  puts the operation's policy number in $gw_cors, so the gateway's own errors
  (error_page, gw:e404...) know it; an empty $gw_cors is the root policy;
- preflights are routed by lua/gwc/router.lua to one `gw:pfN` per distinct
  (preflight answer, IP policy), which answers 204 itself.

Every spec value reaching the configuration is either a checked origin (ngx_str),
a header name of a fixed character set, or a regular expression built here from
checked DNS labels only (ngx_regex).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .diagnostics import WARNING, Diagnostic
from .load import SourceFile
from .schema_defaults import with_defaults

AWS_KEY = "x-amazon-apigateway-cors"
DEFAULT_PORTS = {"http": 80, "https": 443}
# Request headers a page can never set (Fetch, "forbidden request-header"), so
# allowing them means nothing; response headers a page can never read.
FORBIDDEN_REQUEST = frozenset(h.lower() for h in (
    "Accept-Charset", "Accept-Encoding", "Access-Control-Request-Headers", "Access-Control-Request-Method",
    "Access-Control-Request-Private-Network", "Connection", "Content-Length", "Cookie", "Cookie2", "Date", "DNT",
    "Expect", "Host", "Keep-Alive", "Origin", "Referer", "Set-Cookie", "TE", "Trailer", "Transfer-Encoding",
    "Upgrade", "Via",
))
FORBIDDEN_REQUEST_PREFIXES = ("proxy-", "sec-")
FORBIDDEN_RESPONSE = frozenset(("set-cookie", "set-cookie2"))
# The gateway's own, for one answer: the upstream's copies are hidden.
RESPONSE_HEADERS = (
    "Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Access-Control-Expose-Headers",
    "Access-Control-Allow-Methods", "Access-Control-Allow-Headers", "Access-Control-Max-Age",
    "Access-Control-Allow-Private-Network",
)
PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
PREFLIGHT_VARY_PNA = PREFLIGHT_VARY + ", Access-Control-Request-Private-Network"
METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")

_AWS_NAMES = {"origins": "allowOrigins", "methods": "allowMethods", "headers": "allowHeaders",
              "expose": "exposeHeaders", "credentials": "allowCredentials", "max_age": "maxAge"}
_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]{0,31}$")
# The regular expressions below are matched case-insensitively (nginx's map
# looks exact keys up lower-cased too): scheme and host of an origin are.
_RE_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
_RE_ANY_ORIGIN = rf"[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|{_RE_LABEL}(\.{_RE_LABEL})*)(:[0-9]+)?"
_SAFE_REGEX = re.compile(r"^[A-Za-z0-9^$|()?:+*.\[\]\\/-]+$")


@dataclass(frozen=True)
class Wildcard:
    """`scheme://*.suffix[:port]`: one or more DNS labels in front of suffix."""

    scheme: str
    suffix: str  # a DNS name, lower case
    port: Optional[int]  # None: the scheme's default port (absent from the origin)

    @property
    def text(self) -> str:
        return f"{self.scheme}://*.{self.suffix}" + (f":{self.port}" if self.port else "")

    def regex_body(self) -> str:
        port = f":{self.port}" if self.port else ""
        return rf"{self.scheme}://({_RE_LABEL}\.)+{re.escape(self.suffix)}{port}"

    def matches(self, origin: str) -> bool:
        """Python twin of the map's regex (unit tests)."""
        return re.fullmatch(self.regex_body(), origin, re.IGNORECASE) is not None


@dataclass(frozen=True)
class CorsResponse:
    """What an actual (non-preflight) response's CORS headers depend on."""

    origins: Tuple[str, ...]  # exact origins, lower case, sorted
    wildcards: Tuple[Wildcard, ...]
    any_origin: bool  # "*": any well-formed origin gets `*` (never with credentials)
    credentials: bool
    expose: Tuple[str, ...]

    def allows(self, origin: str) -> bool:
        """Python twin of the map (unit tests)."""
        if self.any_origin:
            return re.fullmatch(_RE_ANY_ORIGIN, origin, re.IGNORECASE) is not None
        return origin.lower() in self.origins or any(w.matches(origin) for w in self.wildcards)


@dataclass(frozen=True)
class Cors:
    """One operation's effective CORS policy."""

    response: CorsResponse
    methods: Optional[Tuple[str, ...]]  # None: the methods the path declares
    methods_capped: bool  # methods came from the root: a cap, intersected with each path's
    headers: Optional[Tuple[str, ...]]  # None: what the spec implies for the path
    max_age: int
    private_network: bool


@dataclass(frozen=True)
class Preflight:
    """One preflight answer location, gw:pfN: a policy's answer on the paths that resolve to it."""

    ident: str  # pf1, pf2...; pf0 is the refusal (a method the policy does not allow)
    index: int  # the policy number it sets in $gw_cors (its credentials come from the maps)
    methods: Tuple[str, ...]
    headers: Tuple[str, ...]
    max_age: int
    private_network: bool
    ip_variable: Optional[str]  # the geo variable of the operations' IP policy: "1" allows

    @property
    def allow_methods(self) -> str:
        return ", ".join(self.methods)

    @property
    def allow_headers(self) -> str:
        return ", ".join(self.headers)

    @property
    def vary(self) -> str:
        return PREFLIGHT_VARY_PNA if self.private_network else PREFLIGHT_VARY


@dataclass(frozen=True)
class CorsLocation:
    """What a location that answers CORS needs: its response headers come from the maps."""

    index: int
    hidden: Tuple[str, ...] = RESPONSE_HEADERS


@dataclass(frozen=True)
class MapEntry:
    key: str  # exact: "N|origin"; regex: the pattern after "~*"
    regex: bool
    value: str  # an origin, "*", or "$http_origin"


@dataclass(frozen=True)
class CorsPlan:
    policies: Tuple[CorsResponse, ...]  # policy N is policies[N - 1]
    root_index: int  # 0: no root policy
    op_index: Tuple[int, ...]  # per operation: its policy number, 0 for none
    preflights: Tuple[Preflight, ...]
    route_preflight: Tuple[Optional[Dict[str, str]], ...]  # per route: METHOD -> pf location
    route_index: Tuple[int, ...]  # per route: the policy its 405 and 400 answers carry (0: the root's)

    # --- what the templates format ------------------------------------------------
    def origin_entries(self) -> Tuple[MapEntry, ...]:
        out: List[MapEntry] = []
        numbered = [(str(i), p) for i, p in enumerate(self.policies, start=1)]
        if self.root_index:
            numbered.append(("", self.policies[self.root_index - 1]))  # before routing
        for prefix, p in numbered:
            if p.any_origin:
                out.append(MapEntry(rf"^{prefix}\|{_RE_ANY_ORIGIN}$", True, "*"))
                continue
            out.extend(MapEntry(f"{prefix}|{o}", False, "$http_origin") for o in p.origins)
            out.extend(MapEntry(rf"^{prefix}\|{w.regex_body()}$", True, "$http_origin") for w in p.wildcards)
        for e in out:
            if e.regex:
                check_regex(e.key)
        return tuple(out)

    def _flagged(self, value: Callable[[CorsResponse], str]) -> Tuple[Tuple[str, str], ...]:
        out = []
        for i, p in enumerate(self.policies, start=1):
            if value(p):
                out.append((f"{i}:1", value(p)))
                if i == self.root_index:
                    out.append((":1", value(p)))
        return tuple(out)

    def credentials_entries(self) -> Tuple[Tuple[str, str], ...]:
        return self._flagged(lambda p: "true" if p.credentials else "")

    def expose_entries(self) -> Tuple[Tuple[str, str], ...]:
        return self._flagged(lambda p: ", ".join(p.expose))

    @property
    def private_network(self) -> bool:
        return any(pf.private_network for pf in self.preflights)

    @property
    def map_hash_bucket_size(self) -> Optional[int]:
        """nginx's default map bucket (64 bytes) holds keys up to 46 bytes; longer origins need a larger one."""
        longest = max((len(e.key.encode()) for e in self.origin_entries() if not e.regex), default=0)
        need = 16 + ((longest + 2 + 7) // 8) * 8
        if need <= 64:
            return None
        size = 128
        while size < need:
            size *= 2
        return size

    @property
    def answers_preflights(self) -> bool:
        """Whether some path answers preflights (then gw:pf0 refuses the methods its policy does not allow)."""
        return any(r is not None for r in self.route_preflight)

    def location(self, op_index: int) -> Optional[CorsLocation]:
        index = self.op_index[op_index]
        return CorsLocation(index) if index else None


def check_regex(text: str) -> str:
    """A regular expression built here, safe inside a double-quoted nginx string (no quote, space or `;`)."""
    if not _SAFE_REGEX.match(text) or "\\\\" in text:
        raise ValueError(f"unsafe CORS regular expression {text!r}")
    return text


# --------------------------------------------------------------------------- model


def parse_origin(text: str):
    """An exact origin (str, lower case, default port dropped) or a Wildcard; ValueError says why not."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in text):
        raise ValueError("an origin has no spaces, control or non-ASCII characters (write an IDN host in its xn-- form)")
    low = text.lower()
    scheme, sep, rest = low.partition("://")
    if not sep or not _SCHEME.match(scheme):
        raise ValueError("an origin is scheme://host[:port]")
    if any(c in rest for c in "/?#"):
        raise ValueError("an origin has no path, query or fragment (not even a trailing '/')")
    if "@" in rest:
        raise ValueError("an origin has no user information")
    host, port = rest, None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ValueError("an IPv6 host is written [address]")
        host, tail = rest[: end + 1], rest[end + 1 :]
        try:
            ipaddress.IPv6Address(host[1:-1])
            if not re.fullmatch(r"\[[0-9a-f:.]+\]", host):
                raise ValueError(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        if tail:
            if not tail.startswith(":"):
                raise ValueError("an origin is scheme://host[:port]")
            port = tail[1:]
    elif ":" in rest:
        host, _, port = rest.rpartition(":")
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536 or port.startswith("0"):
            raise ValueError(f"port {port!r} is not 1-65535")
        port = int(port)
        if DEFAULT_PORTS.get(scheme) == port:
            port = None  # browsers never send the default port
    if host.startswith("*."):
        suffix = host[2:]
        if not _DNS_NAME.match(suffix) or "." not in suffix:
            raise ValueError("a wildcard origin is scheme://*.domain with a domain of two labels or more")
        return Wildcard(scheme, suffix, port)
    if "*" in host:
        raise ValueError("a wildcard stands only for whole leading labels: scheme://*.example.com")
    if not host.startswith("[") and not _DNS_NAME.match(host):
        raise ValueError(f"{host!r} is not a host name or IP address")
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def header_problem(name: Any, response: bool) -> Optional[str]:
    if not isinstance(name, str) or (name != "*" and not _HEADER_NAME.match(name)):
        return f"{name!r} is not a header name (letters, digits, '-', '_', '.')"
    low = name.lower()
    if response and low in FORBIDDEN_RESPONSE:
        return f"{name!r} can never be exposed to a page (Fetch forbids reading it)"
    if not response and (low in FORBIDDEN_REQUEST or low.startswith(FORBIDDEN_REQUEST_PREFIXES)):
        return f"{name!r} is a forbidden request header: a page can never set it, the browser does"
    return None


Level = Tuple[Any, SourceFile, str]  # (the raw cors value at a level, its file, its pointer)


class CorsBuilder:
    """Builds operations' Cors from the levels they merge; reports each located problem once."""

    def __init__(self, diags: List[Diagnostic]):
        self.diags = diags
        self._seen: set = set()
        self._built: Dict[tuple, Tuple[bool, Optional[Cors]]] = {}

    def error(self, code: str, message: str, src: SourceFile, ptr: str, severity: str = "error") -> None:
        if (code, src.display, ptr) in self._seen:
            return
        self._seen.add((code, src.display, ptr))
        line, col = src.position(ptr)
        self.diags.append(Diagnostic(code, message, src.display, line, col, ptr, severity))

    def aws(self, data: dict, src: SourceFile) -> Optional[dict]:
        """x-amazon-apigateway-cors as an x-gateway.cors value (None when absent or unusable)."""
        raw = data.get(AWS_KEY)
        if raw is None:
            return None
        ptr = "/" + AWS_KEY
        if not isinstance(raw, dict):
            self.error("GW106", f"{AWS_KEY} is an object (allowOrigins, allowMethods, ...)", src, ptr)
            return None
        from .validate import _registry  # the shared schema registry
        from jsonschema import Draft202012Validator

        schema = {"$ref": "https://gwc.dev/schemas/cors.json#/$defs/aws"}
        ok = True
        for err in Draft202012Validator(schema, registry=_registry()).iter_errors(raw):
            where = ptr + "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in err.absolute_path)
            self.error("GW106", f"invalid {AWS_KEY}: {err.message}", src, where)
            ok = False
        if not ok:
            return None
        out: dict = {}
        # Where a problem found later is located: the AWS member of each x-gateway.cors key.
        if "allowOrigins" in raw:
            out["origins"] = raw["allowOrigins"]
        methods = [m.upper() for m in raw.get("allowMethods") or []]
        if methods and "*" not in methods:
            bad = [m for m in methods if m not in METHOD_ORDER[:6]]
            if bad:
                self.error("GW106", f"{AWS_KEY}: unknown method {bad[0]!r}", src, ptr + "/allowMethods")
                return None
            out["methods"] = sorted(set(methods), key=METHOD_ORDER.index)
        if "allowHeaders" in raw:
            out["headers"] = raw["allowHeaders"]
        if "exposeHeaders" in raw:
            out["expose"] = raw["exposeHeaders"]
        if "allowCredentials" in raw:
            out["credentials"] = raw["allowCredentials"]
        if "maxAge" in raw:
            out["max_age"] = raw["maxAge"]
        return out

    def build(self, levels: Sequence[Level], path_methods: Optional[Tuple[str, ...]]) -> Tuple[bool, Optional[Cors]]:
        """(ok, the Cors of the merged levels or None when off). levels: outermost first, each
        (value, file, pointer), None where a level does not say; path_methods: the methods the path
        declares (None for the root policy)."""
        from .model import deep_merge

        merged: Any = None
        for value, _, _ in levels:
            if value is True and isinstance(merged, dict):
                continue  # `cors: true` turns the outer policy on as it is (as `compression: true` does)
            if value is not None:
                merged = value if merged is None else deep_merge(merged, value)
        if merged is None or merged is False:
            return True, None
        key = (repr(merged), tuple((s.display, p) for v, s, p in levels if v is not None), path_methods)
        if key not in self._built:
            self._built[key] = self._build(merged, levels, path_methods)
        return self._built[key]

    def _where(self, levels: Sequence[Level], *members) -> Tuple[SourceFile, str]:
        """The innermost level that writes cors/members[0]; the innermost cors otherwise."""
        return self._locate(levels, *members)[1:]

    def _locate(self, levels: Sequence[Level], *members) -> Tuple[int, SourceFile, str]:
        present = [(n, v, s, p) for n, (v, s, p) in enumerate(levels) if v is not None]
        for n, value, src, ptr in reversed(present):
            if isinstance(value, dict) and members and members[0] in value:
                names = list(members)
                if ptr == "/" + AWS_KEY:
                    names[0] = _AWS_NAMES.get(names[0], names[0])
                return n, src, ptr + "".join(f"/{m}" for m in names)
        return present[-1][0], present[-1][2], present[-1][3]

    def _build(self, merged: Any, levels: Sequence[Level], path_methods) -> Tuple[bool, Optional[Cors]]:
        conf = with_defaults({} if merged is True else merged, {"$ref": "cors.json"})
        ok = True

        def fail(code, message, *members):
            nonlocal ok
            ok = False
            self.error(code, message, *self._where(levels, *members))

        origins = conf.get("origins")
        if not origins:
            fail("GW105", "cors needs `origins` (at this level or an outer one): the origins allowed to read responses")
            return False, None
        exact: List[str] = []
        wildcards: List[Wildcard] = []
        any_origin = False
        for i, text in enumerate(origins):
            if text == "*":
                any_origin = True
                if conf["credentials"]:
                    fail("GW101", "the origin `*` cannot be combined with `credentials: true` (browsers refuse it); "
                         "list the origins", "origins", i)
                continue
            if isinstance(text, str) and text.strip().lower() == "null":
                fail("GW102", "the origin `null` is never allowed: sandboxed frames, file: pages and redirects "
                     "all send it, so it would admit any of them", "origins", i)
                continue
            try:
                parsed = parse_origin(text)
            except ValueError as exc:
                fail("GW100", f"invalid origin {text!r}: {exc}", "origins", i)
                continue
            if isinstance(parsed, Wildcard):
                wildcards.append(parsed)
            else:
                exact.append(parsed)
        headers = conf.get("headers")
        for name, response in (("headers", False), ("expose", True)):
            for i, h in enumerate(conf.get(name) or ()):
                why = header_problem(h, response)
                if why:
                    fail("GW104", f"cors.{name}: {why}", name, i)
                elif h == "*" and conf["credentials"]:
                    fail("GW101", f"cors.{name}: `*` is a literal name, not a wildcard, with `credentials: true`; "
                         "list the headers", name, i)
        methods = conf.get("methods")
        capped = False
        if methods is not None and path_methods is not None:
            capped = self._locate(levels, "methods")[0] == 0  # written at the root: a cap on every path
            if not capped:
                declared = set(path_methods) | ({"HEAD"} if "GET" in path_methods else set())
                for i, m in enumerate(methods):
                    if m not in declared:
                        fail("GW103", f"cors.methods: {m} is not a method this path declares "
                             f"({', '.join(x for x in METHOD_ORDER if x in declared)})", "methods", i)
        if not ok:
            return False, None
        response = CorsResponse(
            origins=tuple(sorted(set(exact))),
            wildcards=tuple(sorted(set(wildcards), key=lambda w: w.text)),
            any_origin=any_origin,
            credentials=conf["credentials"],
            expose=_unique(conf["expose"]),
        )
        return True, Cors(
            response=response,
            methods=tuple(sorted(set(methods), key=METHOD_ORDER.index)) if methods is not None else None,
            methods_capped=capped,
            headers=_unique(headers) if headers is not None else None,
            max_age=conf["max_age"],
            private_network=conf["private_network"],
        )


def _unique(names) -> Tuple[str, ...]:
    seen: Dict[str, str] = {}
    for n in names:
        seen.setdefault(n.lower(), n)
    return tuple(seen.values())


# --------------------------------------------------------------------------- plan


def _scheme_headers(op, schemes: Dict[str, Any]) -> List[str]:
    out = []
    for req in op.access.requirements or ():
        for name, _ in req:
            s = schemes.get(name)
            if s is None:
                continue
            if s.source is not None and s.source.location == "header":
                out.append(s.source.name)
            elif s.kind == "basic":
                out.append("Authorization")
    if op.access.authorizer is not None:
        out += [i.split(".", 1)[1] for i in op.access.authorizer.identity if i.startswith("header.")]
    return out


def implied_headers(ops, gateway) -> Tuple[str, ...]:
    """What a path's operations imply a page may send: Content-Type, header parameters, credentials' headers."""
    schemes = {s.name: s for s in gateway.security.schemes}
    names = ["Content-Type"]
    for op in ops:
        names += [name for where, name in op.selectors if where == "header"]
        names += _scheme_headers(op, schemes)
    names = _unique(n for n in names if header_problem(n, False) is None)
    return ("Content-Type",) + tuple(sorted((n for n in names if n.lower() != "content-type"), key=str.lower))


def plan_cors(gateway, routes, ip_variable: Callable[[Any], Optional[str]], diags: List[Diagnostic]) -> Optional[CorsPlan]:
    """The numbered policies and the preflight answers; None when nothing uses CORS.

    routes: the plan's Route list; ip_variable(op): the geo variable of the op's IP policy or None."""
    ops = gateway.operations
    root = getattr(gateway, "cors", None)
    if root is None and not any(op.cors is not None for op in ops):
        return None
    policies: List[CorsResponse] = []
    number: Dict[CorsResponse, int] = {}

    def index_of(response: CorsResponse) -> int:
        if response not in number:
            policies.append(response)
            number[response] = len(policies)
        return number[response]

    root_index = index_of(root.response) if root is not None else 0
    op_index = tuple(index_of(op.cors.response) if op.cors is not None else 0 for op in ops)
    preflights: Dict[tuple, Preflight] = {}
    route_preflight: List[Optional[Dict[str, str]]] = []
    route_index: List[int] = []
    for route in routes:
        by_method: Dict[str, List[int]] = {}
        for m, i in route.methods:
            by_method.setdefault(m, []).append(i)
        for m, choices, fallback in route.selected:
            by_method.setdefault(m, []).extend([c.op for c in choices] + ([fallback] if fallback >= 0 else []))
        members = sorted({i for v in by_method.values() for i in v})
        if not any(ops[i].cors is not None for i in members):
            route_preflight.append(None)
            route_index.append(0)
            continue
        indexes = {op_index[i] for i in members}
        route_index.append(indexes.pop() if len(indexes) == 1 else 0)
        declared = tuple(m for m in METHOD_ORDER if m in by_method or (m == "HEAD" and "GET" in by_method))
        implied = None
        answers: Dict[str, str] = {}
        for method in declared:
            if method == "OPTIONS":
                continue  # a preflight never asks for OPTIONS
            candidates = by_method.get(method) or by_method["GET"]
            first = ops[candidates[0]]
            if any(ops[i].cors != first.cors or ip_variable(ops[i]) != ip_variable(first) for i in candidates[1:]):
                diags.append(Diagnostic(
                    "GW107", f"the operations of {method} {route.template.text} that headers or the query select "
                    "differ in their CORS or IP policy: a preflight carries neither, so it cannot tell which applies; "
                    "give them one policy", first.file, pointer=first.pointer + "/x-gateway"))
                continue
            cors = first.cors
            if cors is None:
                answers[method] = "pf0"
                continue
            # Only methods whose own operation shares this policy's origins: a browser caches the
            # answer and then sends a listed method without asking again.
            same = tuple(m for m in declared if m != "OPTIONS"
                         and op_index[(by_method.get(m) or by_method.get("GET"))[0]] == op_index[candidates[0]])
            allowed = same if cors.methods is None else tuple(m for m in cors.methods if m in same)
            if method not in allowed:
                answers[method] = "pf0"
                continue
            if cors.headers is None and implied is None:
                implied = implied_headers([ops[i] for i in members], gateway)
            headers = cors.headers if cors.headers is not None else implied
            key = (op_index[candidates[0]], allowed, headers, cors.max_age, cors.private_network, ip_variable(first))
            if key not in preflights:
                preflights[key] = Preflight(f"pf{len(preflights) + 1}", key[0], allowed, headers, cors.max_age,
                                            cors.private_network, key[5])
            answers[method] = preflights[key].ident
        route_preflight.append(answers)
    return CorsPlan(tuple(policies), root_index, op_index, tuple(preflights.values()),
                    tuple(route_preflight), tuple(route_index))


def both_dialects_warning(src: SourceFile, diags: List[Diagnostic]) -> None:
    line, col = src.position("/" + AWS_KEY)
    diags.append(Diagnostic("GW108", f"both x-gateway.cors and {AWS_KEY} are set: x-gateway.cors applies, "
                            f"{AWS_KEY} is ignored", src.display, line, col, "/" + AWS_KEY, WARNING))
