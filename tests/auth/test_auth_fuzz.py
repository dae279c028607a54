"""Random credentials never get through, never crash, never leave a Lua error.

Hypothesis builds Authorization values, JWT-shaped strings (mutations of a
valid token included), API keys and cookies; each goes to a protected
operation of a real gateway. Every answer must be a 400/401/403 problem
(or, for header values nginx itself refuses, a 400), never a 2xx and never a
5xx; the session's error-log check (conftest) catches any Lua error.
"""
from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import auth_runner

pytestmark = pytest.mark.live

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# Header-safe text: no CR, LF or NUL (those would not be one header).
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
SEGMENT = st.text(alphabet=B64URL + "=+/.", max_size=120)


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@st.composite
def jwt_like(draw):
    kind = draw(st.sampled_from(["segments", "header_json", "mutated"]))
    if kind == "segments":
        return ".".join(draw(st.lists(SEGMENT, min_size=1, max_size=5)))
    if kind == "header_json":
        header = draw(st.dictionaries(st.sampled_from(["alg", "kid", "crit", "typ", "jku", "b64"]),
                                      st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.none(),
                                                st.lists(st.text(max_size=5), max_size=3)), max_size=5))
        payload = draw(st.dictionaries(st.sampled_from(["sub", "iss", "aud", "exp", "nbf", "iat", "scope"]),
                                       st.one_of(st.text(max_size=20), st.integers(), st.floats(allow_nan=False),
                                                 st.none()), max_size=6))
        return f"{_b64(header)}.{_b64(payload)}.{draw(SEGMENT)}"
    return "MUTATE:" + str(draw(st.integers(min_value=0, max_value=10_000)))


def _expect_refused(sent, what):
    r = sent.result
    assert r.status in (400, 401, 403), f"{what}: status {r.status}, body {r.body[:300]!r}"
    assert r.backend is None, f"{what}: reached the backend"
    assert r.headers.get("content-type") == "application/problem+json", what


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=jwt_like(), scheme=st.sampled_from(["Bearer ", "bearer ", "BEARER  ", "Basic ", ""]))
def test_random_bearer_tokens_never_pass(gateways, mint, token, scheme):
    gw = gateways.get("jwt")
    if token.startswith("MUTATE:"):
        seed = int(token.split(":")[1])
        good = mint({"alg": "RS256", "key": "rsa", "kid": "k1"})
        pos = seed % len(good)
        replacement = B64URL[seed % len(B64URL)]
        if good[pos] == replacement or good[pos] == ".":
            replacement = "A" if good[pos] != "A" else "B"
        token = good[:pos] + replacement + good[pos + 1:]
    sent = auth_runner.send(gw, {"path": "/inline/x", "headers": {"Authorization": scheme + token}}, mint)
    _expect_refused(sent, f"Authorization: {scheme}{token[:80]}")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=HEADER_TEXT, cookie=HEADER_TEXT)
def test_random_api_keys_and_cookies_never_pass(gateways, mint, key, cookie):
    gw = gateways.get("apikeys")
    headers = {"X-API-Key": key.strip() or "x", "Cookie": cookie.strip() or "a=b"}
    sent = auth_runner.send(gw, {"path": "/h", "headers": headers}, mint)
    _expect_refused(sent, f"X-API-Key: {key[:60]!r}")
