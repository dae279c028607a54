"""Stage 3, the response cache (x-gateway.cache, x-gateway.cache_zone): nginx's
native proxy_cache, keyed so that one consumer's response never reaches another.

Decided here (templates only format; see docs/cache.md):
- the key: generation | method | host | operation | request path | each `key`
  entry | the consumer (on an operation that requires authentication, unless
  `shared`). Every part but the last is checked at runtime to hold no `|`, so
  no request can make its key equal to another request's (the consumer, last,
  may hold one: an Auth0 `sub` does);
- what is never stored nor served from the cache (fail closed): a request
  without a consumer on an identity-keyed operation, a request with an
  Authorization header the gateway did not verify (an operation without
  authentication), a key part holding the separator;
- freshness: the ttl is the cap. Upstream Cache-Control and Expires are read
  by maps, not by nginx (which would let a max-age above the ttl extend it):
  private, no-store, no-cache, a max-age or s-maxage below the ttl, a
  malformed one, or an Expires without max-age: not stored.

Build errors (located): GW110 a `cache` written on an operation whose method
it does not list; GW111 a key entry naming an undeclared parameter (or one
nginx cannot read by name); GW112 a ttl of 0, below 1s or not whole seconds,
or a bad stale_if_error; GW113 a bad cache_zone (size, path).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

from .diagnostics import Diagnostic
from .load import SourceFile
from .schema_defaults import with_defaults

ZONE_NAME = "gwc_cache"  # the keys_zone every cached location uses
GENERATION_DICT = "gwc_cache_gen"  # lua_shared_dict of the invalidation generations (lua/gwc/response_cache.lua)
# Statuses stored (for the ttl); every other status is passed through uncached.
CACHED_STATUSES = (200, 203, 204, 301, 308)
STALE_ON = ("error", "timeout", "http_500", "http_502", "http_503", "http_504")
SEPARATOR = "|"
# A hit opens its cache file again: each worker keeps up to this many
# descriptors open (nginx checks a cached descriptor against the entry it
# reads, so a replaced entry is reopened), closed after OPEN_FILES_INACTIVE_S unused.
OPEN_FILES = 1000
OPEN_FILES_INACTIVE_S = 60

_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SIZE = re.compile(r"^([0-9]{1,9})([kKmMgG]?)$")
_PATH = re.compile(r"^/?[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")
# Names nginx can read by variable: $arg_NAME and $cookie_NAME stop at anything
# but letters, digits and `_`; $http_NAME maps `-` to `_`, so `_` in a header
# name would alias another header.
_NAME = {
    "query": re.compile(r"^[A-Za-z0-9_]{1,64}$"),
    "cookie": re.compile(r"^[A-Za-z0-9_]{1,64}$"),
    "header": re.compile(r"^[A-Za-z0-9-]{1,64}$"),
    "path": re.compile(r"^[A-Za-z0-9._-]{1,128}$"),
}
_VAR_PREFIX = {"query": "$arg_", "cookie": "$cookie_", "header": "$http_"}

# OpenAPI ignores header parameters of these names, so they need no declaration.
_UNDECLARABLE = {"accept"}


def _ms(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value * 1000
    m = _DURATION.match(str(value))
    return int(m.group(1)) * _UNIT_MS[m.group(2)] if m else None


def _size_ok(text: str) -> bool:
    m = _SIZE.match(str(text))
    return bool(m) and int(m.group(1)) > 0


@dataclass(frozen=True)
class CacheZone:
    """The gateway's one proxy_cache_path."""

    path: str  # relative to the output (or install) directory, or absolute
    max_size: str
    inactive_s: int
    keys_size: str
    name: str = ZONE_NAME

    @property
    def generation_dict(self) -> str:
        return GENERATION_DICT

    @property
    def refresh_regex(self) -> str:
        return REFRESH_REGEX

    def directory(self, base: str) -> str:
        """The cache directory for an output rendered with `base` ("" for nginx.conf, the install dir + "/" for conf.d)."""
        return self.path if self.path.startswith("/") else base + self.path


@dataclass(frozen=True)
class KeyPart:
    source: str  # query, header or cookie
    name: str  # as written

    @property
    def variable(self) -> str:
        name = self.name.lower().replace("-", "_") if self.source == "header" else self.name.lower()
        return _VAR_PREFIX[self.source] + name


@dataclass(frozen=True)
class Cache:
    """One operation's effective cache; operations with equal ones can share a location."""

    ttl_s: int
    keys: Tuple[KeyPart, ...]  # query, header and cookie entries (path parameters are always in the path)
    methods: Tuple[str, ...]  # proxy_cache_methods
    identity: bool  # the consumer is part of the key (an operation that requires authentication, not shared)
    # The request values that carry credentials of the document's schemes (Authorization, API-key headers,
    # query parameters, cookies), on an operation without authentication: the gateway verified none of
    # them, the upstream may answer by them, so a request with any bypasses the cache. () when authenticated.
    credentials: Tuple[str, ...]
    refresh: str  # "" nobody, "any", "consumer" (a request with a consumer)
    stale_if_error_s: int  # 0: off
    zone: str = ZONE_NAME
    open_files: int = OPEN_FILES
    open_files_inactive_s: int = OPEN_FILES_INACTIVE_S

    # --- the key and its guards, as nginx complex values ----------------------------
    @property
    def checked_parts(self) -> Tuple[str, ...]:
        """Key parts a client influences, which must not hold the separator."""
        return ("$host", "$gw_log_path") + tuple(k.variable for k in self.keys)

    @property
    def key_parts(self) -> Tuple[str, ...]:
        parts = ["$gw_cache_gen", "$request_method", "$host", "$gw_op", "$gw_log_path"]
        parts += [k.variable for k in self.keys]
        if self.identity:
            # The scheme that named the consumer (a spec name, no `|`), then the
            # consumer, last: it alone may hold the separator.
            parts += ["$gw_consumer_scheme", "$gw_consumer"]
        return tuple(parts)

    @property
    def guard_source(self) -> str:
        return SEPARATOR.join(self.checked_parts)

    @property
    def guard_regex(self) -> str:
        """Matches guard_source exactly when no checked part holds the separator."""
        return "^[^|]*(\\|[^|]*){%d}$" % (len(self.checked_parts) - 1)

    @property
    def guard_variable(self) -> str:
        return "$gw_cache_sep_%d" % (len(self.checked_parts) - 1)

    @property
    def fresh_variable(self) -> str:
        """1 when the upstream response must not be stored (see fresh_rules)."""
        return "$gw_cache_nostore_%d" % self.ttl_s

    @property
    def credentials_variable(self) -> str:
        return "$gw_cache_credentials_%d" % len(self.credentials)

    @property
    def refresh_variable(self) -> Optional[str]:
        return {"any": "$gw_cache_refresh", "consumer": "$gw_cache_refresh_consumer"}.get(self.refresh)

    @property
    def bypass(self) -> Tuple[str, ...]:
        """proxy_cache_bypass: served from the upstream, not the cache."""
        out = [self.guard_variable]
        if self.identity:
            out.append("$gw_cache_anonymous")
        if self.credentials:
            out.append(self.credentials_variable)
        if self.refresh_variable:
            out.append(self.refresh_variable)
        return tuple(out)

    @property
    def no_store(self) -> Tuple[str, ...]:
        """proxy_no_cache: the response is not stored."""
        out = [self.guard_variable, self.fresh_variable]
        if self.identity:
            out.append("$gw_cache_anonymous")
        if self.credentials:
            out.append(self.credentials_variable)
        return tuple(out)

    @property
    def fresh_rules(self) -> Tuple[Tuple[str, int], ...]:
        return fresh_rules(self.ttl_s)

    @property
    def methods_directive(self) -> str:
        return " ".join(self.methods)

    @property
    def statuses(self) -> str:
        return " ".join(str(s) for s in CACHED_STATUSES)

    @property
    def stale_on(self) -> str:
        return " ".join(STALE_ON)


def below_regex(limit: int) -> str:
    """A regex (no anchors) matching the decimal integers 0 .. limit-1, without leading zeros."""
    if limit <= 0:
        raise ValueError("limit must be positive")
    n = str(limit - 1)
    d = len(n)
    alts: List[str] = []
    if d > 1:
        alts.append("[0-9]" if d == 2 else "[1-9][0-9]{0,%d}|[0-9]" % (d - 2))
    for i in range(d):
        digit = int(n[i])
        prefix = n[:i]
        low = 1 if (i == 0 and d > 1) else 0
        if i == d - 1:
            if digit >= low:
                alts.append(prefix + ("[%d-%d]" % (low, digit) if digit > low else str(digit)))
        elif digit - 1 >= low:
            top = digit - 1
            rest = d - i - 1
            alts.append(prefix + ("[%d-%d]" % (low, top) if top > low else str(low)) + ("[0-9]" if rest == 1 else "[0-9]{%d}" % rest))
    return "|".join(alts)


def fresh_rules(ttl_s: int) -> Tuple[Tuple[str, int], ...]:
    """The map from "$upstream_http_expires|$upstream_http_cache_control" to 1 (do not store), in order.

    Expires (a date) holds no `|`, so `^[^|]*\\|` skips it. s-maxage wins over max-age, as for any shared cache."""
    below = below_regex(ttl_s)
    cc = r"^[^|]*\|(.*[,\s])?"
    value = r'\s*=\s*"?0*(%s)"?\s*(,|$)'
    whole = r'\s*=\s*"?[0-9]+"?\s*(,|$)'
    return (
        (cc + r"(private|no-store|no-cache)(\s|,|=|$)", 1),
        (cc + "s-maxage" + value % below, 1),
        (cc + "s-maxage" + whole, 0),
        (cc + "s-maxage", 1),
        (cc + "max-age" + value % below, 1),
        (cc + "max-age" + whole, 0),
        (cc + "max-age", 1),
        (r"^[^|]+\|", 1),  # an Expires without max-age: a date nginx's maps cannot compare
    )


REFRESH_REGEX = r'(^|[,\s])(no-cache|max-age\s*=\s*"?0+"?)\s*(,|$)'


class CacheBuilder:
    """Builds the zone once, then each operation's cache."""

    def __init__(self, diags: List[Diagnostic]):
        self.diags = diags
        self.used = False
        self.credentials: Tuple[str, ...] = ("$http_authorization",)

    def set_schemes(self, schemes) -> None:
        """The variables of every credential the document's security schemes read (see Cache.credentials)."""
        out = {"$http_authorization"}
        for s in schemes:
            source = getattr(s, "source", None)
            if source is None or source.location not in _VAR_PREFIX:
                continue
            if _NAME[source.location].match(source.name):
                out.add(KeyPart(source.location, source.name).variable)
        self.credentials = tuple(sorted(out))

    def error(self, code: str, message: str, src: SourceFile, ptr: str) -> None:
        line, col = src.position(ptr)
        self.diags.append(Diagnostic(code, message, src.display, line, col, ptr))

    def zone(self, raw: Optional[dict], src: SourceFile) -> Optional[CacheZone]:
        ptr = "/x-gateway/cache_zone"
        conf = with_defaults(raw or {}, {"$ref": "cache.json#/$defs/zone"})
        ok = True
        if not _size_ok(conf["size"]):
            self.error("GW113", f"cache_zone size {conf['size']!r} must be above 0", src, ptr + "/size")
            ok = False
        if not _size_ok(conf["keys_size"]):
            self.error("GW113", f"cache_zone keys_size {conf['keys_size']!r} must be above 0", src, ptr + "/keys_size")
            ok = False
        path = str(conf["path"])
        if not _PATH.match(path) or any(seg in (".", "..") for seg in path.split("/")):
            self.error("GW113", f"cache_zone path {path!r}: letters, digits, `._-` and `/` only, no `.` or `..` segment", src, ptr + "/path")
            ok = False
        inactive = _ms(conf["inactive"])
        if inactive is None or inactive < 1000 or inactive % 1000:
            self.error("GW113", f"cache_zone inactive {conf['inactive']!r} must be whole seconds, at least 1s", src, ptr + "/inactive")
            ok = False
        if not ok:
            return None
        return CacheZone(path.rstrip("/"), conf["size"], inactive // 1000, conf["keys_size"])

    def build(self, raw: Any, where: Callable[[str], Tuple[SourceFile, str]], method: str, written_on_operation: bool,
              declared: Callable[[str, str], bool], path_params: Tuple[str, ...], requirements, authorizer) -> Tuple[bool, Optional[Cache]]:
        """(ok, the operation's Cache or None when it is not cached). ok is False after an error.

        where(member): (file, pointer) of the innermost level that writes cache.<member> ("" for cache itself);
        declared(in, name): whether the operation (or its path item) declares that parameter."""
        if raw is None or raw is False:
            return True, None
        conf = with_defaults({} if raw is True else raw, {"$ref": "cache.json"})
        ok = True

        def error(code: str, message: str, member: str) -> None:
            nonlocal ok
            ok = False
            src, ptr = where(member)
            self.error(code, message, src, ptr)

        methods = tuple(conf["methods"])
        if method not in methods and not (method == "HEAD" and "GET" in methods):
            if written_on_operation:
                error("GW110", f"cache on a {method} operation: add {method} to cache.methods to cache its responses "
                      "(the request body is never part of the key)", "methods" if "methods" in (raw if isinstance(raw, dict) else {}) else "")
                return False, None
            return True, None  # inherited from the root or a path item: this method is not cached
        ttl = _ms(conf["ttl"])
        if ttl is None or ttl == 0 or ttl % 1000:
            error("GW112", f"cache ttl {conf['ttl']!r} must be whole seconds, at least 1s (nginx keeps validity in seconds)", "ttl")
        stale = 0
        if "stale_if_error" in conf:
            s = _ms(conf["stale_if_error"])
            if s is None or s % 1000:
                error("GW112", f"stale_if_error {conf['stale_if_error']!r} must be whole seconds", "stale_if_error")
            else:
                stale = s // 1000
        keys: List[KeyPart] = []
        for i, entry in enumerate(conf["key"]):
            source, _, name = str(entry).partition(".")
            member = f"key/{i}"
            if not _NAME.get(source, _NAME["path"]).match(name):
                error("GW111", f"cache key {entry!r}: a {source} name nginx can read has only "
                      + ("letters, digits and `-`" if source == "header" else "letters, digits and `_`"), member)
                continue
            if source == "path":
                if name not in path_params:
                    error("GW111", f"cache key {entry!r}: {name!r} is not a path parameter of this operation "
                          f"({', '.join(path_params) or 'it has none'})", member)
                continue  # the request path is always in the key
            if not declared(source, name) and not (source == "header" and name.lower() in _UNDECLARABLE):
                error("GW111", f"cache key {entry!r}: the operation declares no {source} parameter {name!r}", member)
                continue
            if source == "header" and name.lower() == "authorization":
                error("GW111", "cache key 'header.Authorization': the consumer identity is keyed already (see `shared`)", member)
                continue
            part = KeyPart(source, name)
            if part.variable not in {k.variable for k in keys}:
                keys.append(part)
        if not ok:
            return False, None
        authenticated = bool(requirements) or authorizer is not None
        shared = conf["shared"]
        refresh = conf["client_refresh"]
        if refresh == "any":
            who = "any"
        elif refresh == "authorized" and authenticated:
            who = "consumer"  # a request with a consumer: it passed the operation's authentication
        else:
            who = ""
        self.used = True
        return True, Cache(
            ttl_s=ttl // 1000,
            keys=tuple(sorted(keys, key=lambda k: (k.source, k.name.lower()))),
            methods=tuple(m for m in ("GET", "HEAD", "POST") if m in methods or m in ("GET", "HEAD")),
            identity=authenticated and not shared,
            credentials=() if authenticated else self.credentials,
            refresh=who,
            stale_if_error_s=stale,
        )
