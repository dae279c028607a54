"""Stage 3, access policy: security schemes, requirements, key files, TLS and IP rules.

OpenAPI decides what is enforced (securitySchemes and security requirements);
`x-gateway` on a scheme says how. Fail closed: once a document declares any
scheme, every operation must resolve to requirements or to an explicit
`security: []`.
"""
from __future__ import annotations

import datetime as dt
import json
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from .diagnostics import Diagnostic, escape_pointer_token
from .load import Document, LoadError, SourceFile
from .schema_defaults import with_defaults

ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_CONSUMER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_PASSWORD_HASH = re.compile(r"^pbkdf2-sha256\$([0-9]{4,7})\$([A-Za-z0-9+/=]{8,128})\$([A-Za-z0-9+/=]{43,88})$")
_JWK_PUBLIC_MEMBERS = {
    "RSA": {"kty", "n", "e", "kid", "alg", "use", "key_ops", "x5c", "x5t", "x5t#S256", "x5u"},
    "EC": {"kty", "crv", "x", "y", "kid", "alg", "use", "key_ops", "x5c", "x5t", "x5t#S256", "x5u"},
    "OKP": {"kty", "crv", "x", "kid", "alg", "use", "key_ops"},
}


@dataclass(frozen=True)
class TokenSource:
    location: str  # header, query or cookie
    name: str
    bearer: bool  # "Authorization: Bearer <token>"


@dataclass(frozen=True)
class JwtSettings:
    issuer: Optional[str]
    audiences: Tuple[str, ...]
    algorithms: Tuple[str, ...]
    leeway_s: int
    required_claims: Tuple[str, ...]
    forward_claims: Tuple[Tuple[str, str], ...]  # (claim, header), sorted by claim
    cache_size: int
    max_token_size: int
    jwks: Optional[dict]  # public keys only
    jwks_uri: Optional[str]
    discovery: Optional[str]
    secret_env: Optional[str]
    refresh_s: int
    min_refetch_s: int  # refill interval of the refetch budget
    refetch_burst: int
    plan_claim: Optional[str] = None  # the claim naming the consumer's usage plan


@dataclass(frozen=True)
class SecurityScheme:
    name: str
    kind: str  # jwt, apikey, basic, mtls
    source: Optional[TokenSource]
    hide_credentials: bool
    jwt: Optional[JwtSettings] = None
    realm: str = "api"
    users: Tuple[Tuple[str, str], ...] = ()  # (username, pbkdf2 hash)
    subject_header: str = ""
    fingerprint_header: str = ""

    @property
    def forwarded_headers(self) -> Tuple[str, ...]:
        """Headers this scheme sets upstream; clients can never send them through."""
        if self.jwt is not None:
            return tuple(h for _, h in self.jwt.forward_claims)
        if self.kind == "mtls":
            return (self.subject_header, self.fingerprint_header)
        return ()


# One requirement object: (scheme name, required scopes) pairs, all needed.
Requirement = Tuple[Tuple[str, Tuple[str, ...]], ...]


@dataclass(frozen=True)
class Authorizer:
    url: str
    scheme: str
    host: str
    port: int
    path: str
    identity: Tuple[str, ...]
    ttl_s: int
    timeout_ms: int
    forward_headers: Tuple[str, ...]


@dataclass(frozen=True)
class IpPolicy:
    allow: Tuple[str, ...]
    deny: Tuple[str, ...]


@dataclass(frozen=True)
class Access:
    """What an operation needs before it reaches its integration."""

    # None: the document declares no security at all. (): explicitly public.
    requirements: Optional[Tuple[Requirement, ...]]
    authorizer: Optional[Authorizer] = None
    ip: Optional[IpPolicy] = None

    @property
    def needs_lua(self) -> bool:
        return bool(self.requirements) or self.authorizer is not None


@dataclass(frozen=True)
class Consumer:
    id: str
    key_sha256: str
    plan: str
    enabled: bool
    expires: Optional[int]  # Unix time


@dataclass(frozen=True)
class TlsListener:
    listen: Tuple[Any, ...]  # model.Listen
    certificate: str
    key: str
    client_ca: Optional[str]
    verify_depth: int
    crl: Optional[str]


@dataclass(frozen=True)
class Security:
    schemes: Tuple[SecurityScheme, ...]
    consumers: Optional[Tuple[Consumer, ...]]  # None: no key file
    trusted_proxies: Tuple[str, ...]
    tls: Optional[TlsListener]

    @property
    def forwarded_headers(self) -> Tuple[str, ...]:
        names = {h.lower(): h for s in self.schemes for h in s.forwarded_headers}
        return tuple(names[k] for k in sorted(names))


NO_SECURITY = Security((), None, (), None)


def _duration_ms(value: Any) -> int:
    from .model import duration_ms  # model imports this module

    return duration_ms(value)


def duration_s(value: Any) -> int:
    return _duration_ms(value) // 1000


def _needs_dns(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
        return False
    except ValueError:
        return True


class SecurityBuilder:
    def __init__(self, doc: Document, diags: List[Diagnostic]):
        self.doc = doc
        self.diags = diags
        self.has_resolver = False  # x-gateway.nginx.resolver is set
        # Settings at the root or on a path item apply to many operations:
        # each (merged value, location) is built, and reported, once.
        self._built: Dict[Tuple[str, str, str], Any] = {}
        self.schemes: Dict[str, SecurityScheme] = {}
        self.declared: Dict[str, str] = {}  # name -> OpenAPI type, even for schemes that failed

    def error(self, code: str, message: str, src: SourceFile, ptr: str, key: bool = False) -> None:
        line, col = src.position(ptr, key=key)
        self.diags.append(Diagnostic(code, message, src.display, line, col, ptr))

    def reachable(self, url: str, src: SourceFile, ptr: str) -> bool:
        """nginx resolves host names in Lua's outbound calls only through `resolver`
        (not /etc/hosts): without one, such a URL would fail at every request."""
        if self.has_resolver or not _needs_dns(url):
            return True
        self.error("GW043", f"{url!r} names a host, which the gateway can only resolve with x-gateway.nginx.resolver (or use an IP address)", src, ptr)
        return False

    # --- side files ------------------------------------------------------------
    def side_file(self, relative: str, src: SourceFile, ptr: str) -> Optional[SourceFile]:
        """A YAML/JSON file named relative to the spec, parsed with positions."""
        target = (Path(src.path).parent / relative)
        try:
            return self.doc._file(target, src)
        except LoadError as exc:
            d = exc.diag
            if d.code == "GW011":
                self.error("GW045", f"cannot read {relative!r}: {d.message.split(': ', 1)[-1]}", src, ptr)
            else:
                self.diags.append(d)
            return None

    # --- schemes ----------------------------------------------------------------
    def build_schemes(self) -> None:
        data = self.doc.data
        components = data.get("components") if isinstance(data.get("components"), dict) else {}
        raw = components.get("securitySchemes") if isinstance(components.get("securitySchemes"), dict) else {}
        key_source = data.get("x-amazon-apigateway-api-key-source")
        for name in sorted(raw):
            ptr = "/components/securitySchemes/" + escape_pointer_token(name)
            try:
                scheme, src, ptr = self.doc.deref(raw[name], self.doc.root, ptr)
            except LoadError as exc:
                self.diags.append(exc.diag)
                continue
            if not isinstance(scheme, dict):
                continue
            self.declared[name] = str(scheme.get("type"))
            conf = with_defaults(scheme.get("x-gateway") if isinstance(scheme.get("x-gateway"), dict) else {}, {"$ref": "security.json"})
            built = self.scheme(name, scheme, conf, src, ptr, key_source)
            if built is not None and built.jwt is None and "plan_claim" in conf:
                self.error("GW093", f"security scheme {name!r}: plan_claim needs a JWT scheme (API keys take their plan from the key file)", src, ptr + "/x-gateway/plan_claim")
                built = None
            if built is not None:
                self.schemes[name] = built

    def scheme(self, name: str, scheme: dict, conf: dict, src: SourceFile, ptr: str, key_source: Any) -> Optional[SecurityScheme]:
        kind = scheme.get("type")
        hide = conf["hide_credentials"]
        if kind == "apiKey":
            location, param = scheme.get("in"), scheme.get("name")
            if key_source == "HEADER":
                location, param = "header", "X-API-Key"  # AWS reads keys from this header only
            if location not in ("header", "query", "cookie") or not isinstance(param, str) or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}", param):
                self.error("GW042", f"security scheme {name!r}: apiKey needs `in` header, query or cookie and a token-like `name`", src, ptr)
                return None
            return SecurityScheme(name, "apikey", TokenSource(location, param, False), hide)
        if kind == "mutualTLS":
            return SecurityScheme(name, "mtls", None, False, subject_header=conf["subject_header"], fingerprint_header=conf["fingerprint_header"])
        if kind == "http":
            http_scheme = str(scheme.get("scheme", "")).lower()
            if http_scheme == "basic":
                return self.basic(name, conf, src, ptr, hide)
            if http_scheme != "bearer":
                self.error("GW042", f"security scheme {name!r}: HTTP scheme {scheme.get('scheme')!r} is not supported (bearer and basic are)", src, ptr + "/scheme")
                return None
            return self.jwt_scheme(name, conf, src, ptr, discovery=None)
        if kind == "oauth2":
            return self.jwt_scheme(name, conf, src, ptr, discovery=None)
        if kind == "openIdConnect":
            url = scheme.get("openIdConnectUrl")
            if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s]+", url):
                self.error("GW042", f"security scheme {name!r}: openIdConnectUrl must be an http(s) URL", src, ptr + "/openIdConnectUrl")
                return None
            return self.jwt_scheme(name, conf, src, ptr, discovery=url)
        self.error("GW042", f"security scheme {name!r}: type {kind!r} is not supported", src, ptr + "/type")
        return None

    def jwt_scheme(self, name: str, conf: dict, src: SourceFile, ptr: str, discovery: Optional[str]) -> Optional[SecurityScheme]:
        gw_ptr = ptr + "/x-gateway"
        sources = [k for k in ("jwks_uri", "jwks_file", "jwks") if k in conf]
        if len(sources) > 1:
            self.error("GW043", f"security scheme {name!r}: give one of jwks_uri, jwks_file and jwks, not {', '.join(sources)}", src, gw_ptr)
            return None
        jwks = None
        if "jwks" in conf:
            jwks = self.public_jwks(name, conf["jwks"], src, gw_ptr + "/jwks")
            if jwks is None:
                return None
        elif "jwks_file" in conf:
            side = self.side_file(conf["jwks_file"], src, gw_ptr + "/jwks_file")
            if side is None:
                return None
            jwks = self.public_jwks(name, side.data, side, "")
            if jwks is None:
                return None
        algorithms = tuple(conf.get("algorithms") or ASYMMETRIC_ALGORITHMS)
        wants_hmac = [a for a in algorithms if a in HMAC_ALGORITHMS]
        secret_env = conf.get("secret_env")
        if wants_hmac and not secret_env:
            self.error("GW043", f"security scheme {name!r}: {', '.join(wants_hmac)} need `secret_env`, the environment variable holding the shared secret", src, gw_ptr + "/algorithms")
            return None
        if "jwks_uri" in conf and not self.reachable(conf["jwks_uri"], src, gw_ptr + "/jwks_uri"):
            return None
        if discovery and not self.reachable(discovery, src, ptr + "/openIdConnectUrl"):
            return None
        if not (jwks or "jwks_uri" in conf or discovery or secret_env):
            self.error("GW043", f"security scheme {name!r}: JWT needs keys: set x-gateway jwks_uri, jwks_file, jwks or secret_env", src, ptr)
            return None
        source = conf.get("token_from")
        if source is None:
            token = TokenSource("header", "Authorization", True)
        else:
            token = TokenSource(source["in"], source["name"], source["in"] == "header" and source["name"].lower() == "authorization")
        settings = JwtSettings(
            issuer=conf.get("issuer"),
            audiences=tuple(conf.get("audiences", ())),
            algorithms=algorithms,
            leeway_s=duration_s(conf["leeway"]),
            required_claims=tuple(conf["required_claims"]),
            forward_claims=tuple(sorted(conf["forward_claims"].items())),
            cache_size=conf["cache_size"],
            max_token_size=conf["max_token_size"],
            jwks=jwks,
            jwks_uri=conf.get("jwks_uri"),
            discovery=discovery,
            secret_env=secret_env,
            refresh_s=max(duration_s(conf["jwks_refresh"]), 1),
            min_refetch_s=max(duration_s(conf["jwks_min_refetch"]), 1),
            refetch_burst=conf["jwks_refetch_burst"],
            plan_claim=conf.get("plan_claim"),
        )
        return SecurityScheme(name, "jwt", token, conf["hide_credentials"], jwt=settings)

    def public_jwks(self, name: str, value: Any, src: SourceFile, ptr: str) -> Optional[dict]:
        keys = value.get("keys") if isinstance(value, dict) else None
        if not isinstance(keys, list) or not keys:
            self.error("GW043", f"security scheme {name!r}: a JWKS is an object with a non-empty `keys` array", src, ptr or "")
            return None
        out = []
        for i, key in enumerate(keys):
            kptr = f"{ptr}/keys/{i}"
            kty = key.get("kty") if isinstance(key, dict) else None
            if kty == "oct" or (isinstance(key, dict) and "d" in key):
                self.error("GW044", f"security scheme {name!r}: key {i} is secret key material, which must never be copied into the output; use secret_env for HMAC", src, kptr)
                return None
            if kty not in _JWK_PUBLIC_MEMBERS:
                self.error("GW043", f"security scheme {name!r}: key {i} has unsupported kty {kty!r} (RSA, EC or OKP)", src, kptr)
                return None
            out.append({k: v for k, v in key.items() if k in _JWK_PUBLIC_MEMBERS[kty]})
        return {"keys": out}

    def basic(self, name: str, conf: dict, src: SourceFile, ptr: str, hide: bool) -> Optional[SecurityScheme]:
        gw_ptr = ptr + "/x-gateway"
        if "credentials" not in conf:
            self.error("GW043", f"security scheme {name!r}: HTTP basic needs x-gateway.credentials, a file of users and password hashes", src, ptr)
            return None
        side = self.side_file(conf["credentials"], src, gw_ptr + "/credentials")
        if side is None:
            return None
        users = side.data.get("users") if isinstance(side.data, dict) else None
        if not isinstance(users, list):
            self.error("GW046", "a credentials file is a mapping with a `users` list", side, "")
            return None
        out = []
        seen = set()
        for i, user in enumerate(users):
            uptr = f"/users/{i}"
            if not isinstance(user, dict) or not isinstance(user.get("username"), str) or not _CONSUMER_ID.match(user["username"]):
                self.error("GW046", "each user needs a `username` of letters, digits, '.', '_', '@' or '-'", side, uptr)
                continue
            if not isinstance(user.get("password_hash"), str) or not _PASSWORD_HASH.match(user["password_hash"]):
                self.error("GW046", "`password_hash` must be pbkdf2-sha256$ITERATIONS$SALT$HASH (see `gwc keys passwd`)", side, uptr + "/password_hash")
                continue
            if user["username"] in seen:
                self.error("GW046", f"duplicate username {user['username']!r}", side, uptr + "/username")
                continue
            seen.add(user["username"])
            out.append((user["username"], user["password_hash"]))
        return SecurityScheme(name, "basic", TokenSource("header", "Authorization", False), hide, realm=conf["realm"], users=tuple(sorted(out)))

    # --- requirements -----------------------------------------------------------
    def requirements(self, value: Any, src: SourceFile, ptr: str, scopes_ok: bool = True) -> Optional[Tuple[Requirement, ...]]:
        if not isinstance(value, list):
            return None
        out: List[Requirement] = []
        for i, req in enumerate(value):
            if not isinstance(req, dict):
                continue
            pairs = []
            for name in sorted(req):
                scopes = req[name] if isinstance(req[name], list) else []
                if name not in self.declared:
                    known = ", ".join(sorted(self.declared)) or "none declared"
                    self.error("GW041", f"security requirement names unknown scheme {name!r} (known: {known})", src, f"{ptr}/{i}/{escape_pointer_token(name)}", key=True)
                    return None
                if name not in self.schemes:
                    return None  # the scheme itself was reported
                pairs.append((name, tuple(str(s) for s in scopes)))
            if not pairs:
                return ()  # {} is an anonymous alternative: nothing is required
            out.append(tuple(pairs))
        return tuple(out)

    # --- other policy -----------------------------------------------------------
    def _once(self, build, conf: dict, src: SourceFile, ptr: str):
        key = (src.display, ptr, json.dumps(conf, sort_keys=True, default=str))
        if key not in self._built:
            self._built[key] = build(conf, src, ptr)
        return self._built[key]

    def authorizer(self, conf: dict, src: SourceFile, ptr: str) -> Optional[Authorizer]:
        return self._once(self._authorizer, conf, src, ptr)

    def check_ip_rules(self, locations) -> bool:
        """Reports every bad address in `ip` and `trusted_proxies`, once, where it is
        written (levels merge later, so errors are found per level). locations:
        (level, x-gateway value, file, pointer) as validate.gateway_locations yields."""
        ok = True
        for _level, value, src, ptr in locations:
            if not isinstance(value, dict):
                continue
            rules = value.get("ip") if isinstance(value.get("ip"), dict) else {}
            for key in ("allow", "deny"):
                if isinstance(rules.get(key), list) and self.cidrs(rules[key], src, f"{ptr}/ip/{key}") is None:
                    ok = False
        return ok

    def ip_policy(self, conf: dict) -> Optional[IpPolicy]:
        """The merged policy of an operation; its addresses were checked by check_ip_rules."""
        try:
            allow = tuple(str(ipaddress.ip_network(str(c), strict=False)) for c in conf.get("allow", []))
            deny = tuple(str(ipaddress.ip_network(str(c), strict=False)) for c in conf.get("deny", []))
        except ValueError:
            return None
        return IpPolicy(allow, deny) if allow or deny else None

    def _authorizer(self, conf: dict, src: SourceFile, ptr: str) -> Optional[Authorizer]:
        conf = with_defaults(conf, {"$ref": "auth.json#/$defs/authorizer"})
        if "url" not in conf:
            self.error("GW021", "x-gateway.authorizer needs a `url` (at this level or an outer one)", src, ptr)
            return None
        parts = urlsplit(conf["url"])
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = None
        host = parts.hostname or ""
        if port is None or not host or parts.username or parts.fragment or any(c in conf["url"] for c in "\"'\\ "):
            self.error("GW033", f"bad authorizer URL {conf['url']!r}", src, ptr + "/url")
            return None
        if not self.reachable(conf["url"], src, ptr + "/url"):
            return None
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return Authorizer(
            url=conf["url"], scheme=parts.scheme, host=host, port=port, path=path,
            identity=tuple(conf["identity"]), ttl_s=duration_s(conf["ttl"]),
            timeout_ms=max(_duration_ms(conf["timeout"]), 1),
            forward_headers=tuple(conf["forward_headers"]),
        )

    def cidrs(self, values: List[Any], src: SourceFile, ptr: str) -> Optional[Tuple[str, ...]]:
        out = []
        ok = True
        for i, raw in enumerate(values):
            try:
                net = ipaddress.ip_network(str(raw), strict=False)
            except ValueError:
                self.error("GW047", f"{raw!r} is not an IP address or CIDR block", src, f"{ptr}/{i}")
                ok = False
                continue
            out.append(str(net))
        return tuple(out) if ok else None

    def consumers(self, relative: str, src: SourceFile, ptr: str) -> Optional[Tuple[Consumer, ...]]:
        side = self.side_file(relative, src, ptr)
        if side is None:
            return None
        return consumers_from_data(side.data, lambda code, msg, p: self.error(code, msg, side, p))

    def tls(self, conf: dict, src: SourceFile, ptr: str, listen_parser) -> Optional[TlsListener]:
        conf = with_defaults(conf, {"$ref": "auth.json#/$defs/tls"})
        listen = listen_parser(conf["listen"], src, ptr + "/listen")
        return TlsListener(listen, conf["certificate"], conf["key"], conf.get("client_ca"), conf["verify_depth"], conf.get("crl"))


def consumers_from_data(data: Any, report) -> Optional[Tuple[Consumer, ...]]:
    """Consumers of a key file; report(code, message, pointer) for each bad entry."""
    entries = data.get("consumers") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        report("GW046", "a key file is a mapping with a `consumers` list", "")
        return None
    out = []
    ids, hashes = set(), set()
    for i, entry in enumerate(entries):
        eptr = f"/consumers/{i}"
        if not isinstance(entry, dict):
            report("GW046", "each consumer is a mapping", eptr)
            continue
        cid, digest = entry.get("id"), entry.get("key_sha256")
        if not isinstance(cid, str) or not _CONSUMER_ID.match(cid):
            report("GW046", "`id` must be letters, digits, '.', '_', '@' or '-' (at most 128)", eptr + "/id")
            continue
        if not isinstance(digest, str) or not _SHA256_HEX.match(digest):
            report("GW046", "`key_sha256` must be the lower-case hex SHA-256 of the key; the key itself is never stored", eptr + "/key_sha256")
            continue
        if cid in ids:
            report("GW046", f"duplicate consumer id {cid!r}", eptr + "/id")
            continue
        if digest in hashes:
            report("GW046", "two consumers have the same key", eptr + "/key_sha256")
            continue
        plan = entry.get("plan", "")
        if not isinstance(plan, str) or (plan and not re.match(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$", plan)):
            report("GW046", "`plan` must be a plan name", eptr + "/plan")
            continue
        enabled = entry.get("enabled", True)
        if not isinstance(enabled, bool):
            report("GW046", "`enabled` must be true or false", eptr + "/enabled")
            continue
        expires = entry.get("expires")
        if expires is not None:
            expires = _timestamp(expires)
            if expires is None:
                report("GW046", "`expires` must be an RFC 3339 date-time such as 2027-01-01T00:00:00Z", eptr + "/expires")
                continue
        ids.add(cid)
        hashes.add(digest)
        out.append(Consumer(cid, digest, plan, enabled, expires))
    return tuple(out)


def _timestamp(value: Any) -> Optional[int]:
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        return int(moment.timestamp())
    if isinstance(value, dt.date):
        return int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc).timestamp())
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        return int(moment.timestamp())
    return None


def keys_data(consumers: Tuple[Consumer, ...]) -> dict:
    """keys.json: consumers keyed by key hash, so the gateway never scans."""
    return {
        "consumers": {
            c.key_sha256: {"id": c.id, "plan": c.plan, "enabled": c.enabled, "expires": c.expires}
            for c in sorted(consumers, key=lambda c: c.key_sha256)
        }
    }
