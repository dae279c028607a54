"""Diagnostics shared by every stage.

A stage never raises for bad input: it returns diagnostics, and only the CLI
turns them into an exit code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, List, Optional

ERROR = "error"
WARNING = "warning"

# Stable codes; docs/diagnostics.md lists them and a test keeps both in sync.
CODES = {
    "GW001": "malformed YAML or JSON",
    "GW002": "not an OpenAPI 3.0 or 3.1 document",
    "GW003": "file cannot be read",
    "GW004": "duplicate key in a mapping",
    "GW010": "OpenAPI structural error",
    "GW011": "unresolvable $ref",
    "GW013": "a schema's default or example does not match the schema itself (warning)",
    "GW020": "unknown x-gateway key",
    "GW021": "invalid x-gateway value",
    "GW030": "duplicate operationId",
    "GW031": "ambiguous routes",
    "GW032": "unknown upstream",
    "GW033": "bad URL",
    "GW034": "invalid path template",
    "GW035": "mock example not found",
    "GW036": "operation has no integration (neither upstream nor mock)",
    "GW037": "conflicting base paths in servers (no longer raised: the API is served under each)",
    "GW038": "unsafe value for the generated configuration",
    "GW039": "invalid listen address",
    "GW040": "operation not covered by security (fail closed)",
    "GW041": "security requirement names an unknown scheme",
    "GW042": "unsupported security scheme",
    "GW043": "incomplete or conflicting security scheme settings",
    "GW044": "secret key material would reach the output",
    "GW045": "key, credentials or JWKS file cannot be read",
    "GW046": "invalid entry in a key or credentials file",
    "GW047": "invalid IP address or CIDR block",
    "GW048": "mutualTLS scheme without a TLS listener that asks for client certificates",
    "GW049": "API-key scheme without a key file",
    "GW050": "output directory cannot be written",
    "GW060": "generated configuration failed verification",
    "GW070": "schema cannot be read (bad $ref, wrong JSON type for a keyword)",
    "GW071": "pattern is not valid ECMA-262",
    "GW072": "pattern cannot run safely on PCRE (lookbehind, backreference, nested quantifier)",
    "GW073": "schema keyword not supported by the validator compiler",
    "GW074": "schema recursion that consumes no input (infinite loop)",
    "GW075": "parameter cannot be validated (unsupported style, missing schema)",
    "GW076": "request body media type cannot be validated",
    "GW077": "invalid AWS request validator reference",
    "GW080": "path key with a #fragment or ?query: routed by the path before it",
    "GW081": "same-shape path templates with different parameter names, routed per method",
    "GW082": "operations on one path and method that no header or query parameter tells apart",
    "GW090": "invalid rate limit or quota (a rate of 0, a bad offset, duplicate names)",
    "GW091": "fleet-scope limit without x-gateway.redis",
    "GW092": "unknown usage plan or operation (default_plan, key file, plan operations)",
    "GW093": "plan_claim on a scheme that is not JWT",
    "GW094": "invalid status listener (bad address, a public port, or off loopback without allow)",
    "GW095": "invalid WAF setting (exclusion rule id, range or target; rules file)",
    "GW096": "WAF max_body beyond the operation's body limit",
    "GW097": "the WAF's ModSecurity module or the OWASP CRS is not installed in the runtime",
    "GW098": "a WAF rules file names a CRS rule gwc replaces by its own rules (warning): name those too",
    "GW100": "invalid CORS origin (not scheme://host[:port], a path, a misplaced wildcard)",
    "GW101": "CORS `*` (origin, headers or expose) combined with credentials",
    "GW102": "CORS origin `null` listed",
    "GW103": "CORS method the path does not declare",
    "GW104": "CORS header name invalid or forbidden (a page can never set or read it)",
    "GW105": "CORS without origins",
    "GW106": "invalid x-amazon-apigateway-cors",
    "GW107": "operations selected by header or query on one path and method with different CORS or IP policies",
    "GW108": "both x-gateway.cors and x-amazon-apigateway-cors (x-gateway.cors applies; warning)",
    "GW110": "cache on an operation whose method cache.methods does not list",
    "GW111": "cache key naming an undeclared parameter, or a name nginx cannot read",
    "GW112": "cache ttl of 0, below 1s, not whole seconds or unparsable; bad stale_if_error",
    "GW113": "invalid cache_zone (size, keys_size, path, inactive)",
    "GW120": "compression level outside 1-9",
    "GW121": "not a media type (compression.types, binary_media_types, x-amazon-apigateway-binary-media-types)",
    "GW122": "invalid compression min_size or x-amazon-apigateway-minimum-compression-size (negative or unparsable)",
    "GW123": "brotli asked for (compression.brotli: auto) but the build host has no brotli module: gzip only (warning)",
    "GW124": "binary media types that cover every compression type, or text/html (warning)",
}


def escape_pointer_token(token) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    file: str = ""
    line: int = 0
    col: int = 0
    pointer: Optional[str] = None
    severity: str = ERROR

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def format_text(self) -> str:
        loc = self.file or "<input>"
        if self.line:
            loc += f":{self.line}:{self.col or 1}"
        text = f"{loc}: {self.severity}[{self.code}]: {self.message}"
        if self.pointer is not None:
            text += f" (at {self.pointer or '/'})"
        return text

    def format_github(self) -> str:
        def esc(value: str) -> str:
            return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")

        def esc_prop(value: str) -> str:
            return esc(value).replace(":", "%3A").replace(",", "%2C")

        props = [f"file={esc_prop(self.file)}"] if self.file else []
        if self.line:
            props += [f"line={self.line}", f"col={self.col or 1}"]
        props.append(f"title={self.code}")
        message = self.message
        if self.pointer is not None:
            message += f" (at {self.pointer or '/'})"
        return f"::{self.severity} {','.join(props)}::{esc(message)}"

    def as_dict(self) -> dict:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "pointer": self.pointer,
        }


def has_errors(diags: Iterable[Diagnostic]) -> bool:
    return any(d.is_error for d in diags)


def sort_key(diag: Diagnostic):
    return (diag.file, diag.line, diag.col, diag.code, diag.message)


def render(diags: List[Diagnostic], fmt: str) -> str:
    ordered = sorted(diags, key=sort_key)
    if fmt == "json":
        return json.dumps([d.as_dict() for d in ordered], indent=2)
    if fmt == "github":
        return "\n".join(d.format_github() for d in ordered)
    return "\n".join(d.format_text() for d in ordered)
