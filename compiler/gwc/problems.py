"""The catalogue of problem+json responses the gateway itself produces.

One source for the titles and details: render writes it to
lua/gwc/data/problems.json for lua/gwc/problem.lua, and the template uses it
for the answers nginx sends natively (404 and 405, the common ones).
"""
from __future__ import annotations

import json
import re
from typing import Dict, Tuple

TITLES: Dict[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

DETAILS: Dict[int, str] = {
    400: "The request is malformed.",
    404: "No operation matches the request path.",
    405: "The operation does not allow this method.",
    408: "The client did not send the request in time.",
    411: "The request needs a Content-Length.",
    413: "The request body is larger than the gateway accepts.",
    414: "The request URI is longer than the gateway accepts.",
    500: "The gateway failed to process the request.",
    501: "The gateway does not implement this request.",
    502: "The upstream could not be reached or sent an invalid response.",
    503: "The upstream is unavailable.",
    504: "The upstream did not respond in time.",
    505: "The gateway speaks HTTP/1.0 and HTTP/1.1 only.",
}

# $gw_problem values set before an error, and their details.
REASONS: Dict[str, str] = {
    "encoded_slash": "A backslash, or an encoded '/' or '\\', is not allowed in the request path.",
    # Authentication. Details never echo the credential or say which check
    # of a token failed beyond its class: the log's reason code does that.
    "credentials_missing": "The operation requires credentials.",
    "credentials_ambiguous": "The credential was sent more than once.",
    "jwt_missing": "The operation requires a bearer token.",
    "jwt_malformed": "The bearer token is malformed.",
    "jwt_too_large": "The bearer token is too large.",
    "jwt_bad_encoding": "The bearer token is not canonical base64url.",
    "jwt_alg_not_allowed": "The bearer token's algorithm is not accepted.",
    "jwt_crit": "The bearer token has critical header parameters the gateway does not understand.",
    "jwt_kid_required": "The bearer token must name its key (kid).",
    "jwt_unknown_kid": "The bearer token's key is unknown.",
    "jwt_bad_signature": "The bearer token's signature is invalid.",
    "jwt_expired": "The bearer token has expired.",
    "jwt_not_yet_valid": "The bearer token is not valid yet.",
    "jwt_bad_issuer": "The bearer token was issued by an issuer the operation does not trust.",
    "jwt_bad_audience": "The bearer token is not meant for this API.",
    "jwt_missing_claim": "The bearer token lacks a required claim.",
    "jwt_bad_claim": "The bearer token has a claim of the wrong type.",
    "jwks_unavailable": "The keys needed to verify the token are unavailable.",
    "insufficient_scope": "The token does not carry the scopes the operation requires.",
    "apikey_missing": "The operation requires an API key.",
    "apikey_invalid": "The API key is not valid.",
    "apikey_disabled": "The API key has been revoked.",
    "apikey_expired": "The API key has expired.",
    "basic_missing": "The operation requires a user name and password.",
    "basic_invalid": "The user name or password is not valid.",
    "mtls_required": "The operation requires a verified client certificate.",
    "mtls_unverified": "The client certificate could not be verified.",
    "authorizer_identity_missing": "The operation requires credentials.",
    "authorizer_denied": "The authorizer denied the request.",
    "authorizer_unavailable": "The authorizer is unavailable.",
    "ip_denied": "The client address is not allowed.",
    # Request validation; the body's `errors` member lists each failure.
    "invalid_request": "The request does not match the API description.",
    "body_required": "The operation requires a request body.",
    "unsupported_media_type": "The operation does not accept this Content-Type.",
    "body_too_large": "The request body is larger than the operation accepts.",
    "body_malformed": "The request body is not well-formed.",
    "body_too_deep": "The request body nests too deeply.",
    # Traffic (docs/traffic.md); Retry-After says when to try again.
    "throttled": "The request rate exceeds the limit.",
    "quota_exceeded": "The quota for this period is used up.",
    "plan_unknown": "The consumer's usage plan is not offered by this API.",
    "limit_unavailable": "The rate limiter is unavailable.",
    # The WAF (docs/waf.md): never says which rule matched.
    "waf_filtered": "The request was refused by the gateway's web application firewall.",
}

# Problem types other than about:blank: refusals a client handles differently
# (wait a second, or until the period ends).
TYPES: Dict[str, str] = {
    "throttled": "https://gwc.dev/problems/throttled",
    "quota_exceeded": "https://gwc.dev/problems/quota-exceeded",
    "waf_filtered": "https://gwc.dev/problems/waf-filtered",
}

# nginx's internal codes for request-header and TLS client-certificate
# failures, which it reports to clients as 400.
SPECIAL: Dict[int, Tuple[int, str]] = {
    494: (400, "The request headers are larger than the gateway accepts."),
    495: (400, "The client certificate could not be verified."),
    496: (400, "A client certificate is required."),
    497: (400, "A plain HTTP request was sent to an HTTPS port."),
}

# Statuses routed through error_page to the Lua problem handler.
ERROR_PAGE_STATUSES = (400, 401, 403, 404, 405, 408, 411, 413, 414, 429, 494, 495, 496, 497, 500, 501, 502, 503, 504, 505)


def catalogue() -> dict:
    """JSON-ready data for lua/gwc/problem.lua."""
    return {
        "titles": {str(k): v for k, v in TITLES.items()},
        "details": {str(k): v for k, v in DETAILS.items()},
        "reasons": REASONS,
        "types": TYPES,
        "special": {str(k): list(v) for k, v in SPECIAL.items()},
    }


# Allowed methods, and what selects one of several operations on a path and
# method: names from a fixed character set (paths.fragment_items).
_DETAIL_VARIABLES = {"$gw_allow", "$gw_expect"}
_VARIABLE = re.compile(r"\$[a-z_]+")


def native_body(status: int, detail: str) -> str:
    """The body of a problem nginx sends itself with `return`, as the text of a
    single-quoted nginx string. `instance` and `request_id` come from the
    variables the router sets; detail may name the router's variables whose
    values are safe inside a JSON string (_DETAIL_VARIABLES)."""
    static = json.dumps(TITLES[status])
    for text in (static, detail):
        if any(c in text for c in "'\\") or not set(_VARIABLE.findall(text)) <= _DETAIL_VARIABLES or "$" in _VARIABLE.sub("", text):
            raise ValueError(f"problem text not safe for an nginx string: {text!r}")
    return (
        '{"type":"about:blank","title":' + static + ',"status":' + str(status) + ',"detail":' + json.dumps(detail)
        + ',"instance":$gw_instance,"request_id":"$gw_request_id"}'
    )
