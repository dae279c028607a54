"""gwc.jwt inside nginx: real tokens for every algorithm, the RFC examples, and an attack suite written as data."""
import hashlib
import hmac
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization

from jose_util import (ALGS, b64url, b64url_decode, claims, family_of, jwks_of, lua_value, mint, private_key,
                       public_jwk, sign_raw, verify_one, verify_tokens)
from test_crypto import (RFC7515_A1_JWK, RFC7515_A1_TOKEN, RFC7515_A2_JWK, RFC7515_A2_TOKEN, RFC7515_A3_JWK,
                         RFC7515_A3_TOKEN, RFC8037_A4_JWK, RFC8037_A4_TOKEN)

ISSUER = "https://id.example.com/"
CONF = {"issuer": ISSUER, "audiences": ["pets"], "leeway": 60}


def all_keys():
    return jwks_of(*(public_jwk(f) for f in ("hmac", "rsa", "p256", "p384", "p521", "ed25519")))


@pytest.mark.parametrize("alg", ALGS)
def test_every_algorithm_verifies(lua, alg):
    family = family_of(alg)
    with_kid = mint(alg)
    without_kid = mint(alg, kid=None)
    results = verify_tokens(lua, jwks_of(public_jwk(family)), [with_kid, without_kid], **CONF)
    for r in results:
        assert r["reason"] is None, r
        assert r["claims"]["sub"] == "user-1"
        assert r["claims"]["iss"] == ISSUER


def test_every_algorithm_against_one_mixed_set(lua):
    tokens = [mint(alg) for alg in ALGS]
    results = verify_tokens(lua, all_keys(), tokens, **CONF)
    assert [r["reason"] for r in results] == [None] * len(ALGS)


@pytest.mark.parametrize("alg", ALGS)
def test_modified_payload_fails_for_every_algorithm(lua, alg):
    h, _, s = mint(alg).split(".")
    forged = b64url(json.dumps(claims(sub="admin")).encode())
    r = verify_one(lua, all_keys(), f"{h}.{forged}.{s}", **CONF)
    assert r["reason"] == "jwt_bad_signature"


@pytest.mark.parametrize("token,jwk", [
    (RFC7515_A1_TOKEN, RFC7515_A1_JWK),
    (RFC7515_A2_TOKEN, RFC7515_A2_JWK),
    (RFC7515_A3_TOKEN, RFC7515_A3_JWK),
], ids=["A.1-HS256", "A.2-RS256", "A.3-ES256"])
def test_rfc7515_examples(lua, token, jwk):
    # Their exp is in 2011: a huge leeway shows the signature is good, the default one rejects them.
    old = verify_tokens(lua, jwks_of(jwk), [token], leeway=2_000_000_000, issuer="joe")[0]
    assert old["reason"] is None, old
    assert old["claims"]["http://example.com/is_root"] is True
    assert verify_one(lua, jwks_of(jwk), token)["reason"] == "jwt_expired"


def test_rfc8037_ed25519_example(lua):
    # The signature verifies; the payload is plain text, so only then is the token refused as no claims set.
    r = verify_one(lua, jwks_of(RFC8037_A4_JWK), RFC8037_A4_TOKEN)
    assert r["reason"] == "jwt_malformed"
    assert "payload" in r["detail"]
    bad = RFC8037_A4_TOKEN[:-3] + ("B" if RFC8037_A4_TOKEN[-3] != "B" else "C") + RFC8037_A4_TOKEN[-2:]
    assert verify_one(lua, jwks_of(RFC8037_A4_JWK), bad)["reason"] == "jwt_bad_signature"


# --- the attack suite -----------------------------------------------------------------------------------------

NOW = int(time.time())
RSA_HDR = {"alg": "RS256", "kid": "rsa-0"}


def _rsa_public(fmt):
    pub = private_key("rsa").public_key()
    if fmt == "pem":
        return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _hs_with_secret(header, secret):
    h = b64url(json.dumps(header).encode())
    p = b64url(json.dumps(claims()).encode())
    sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64url(sig)}"


def _unsigned(header):
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims()).encode())}."


def _segments(token):
    return token.split(".")


def _with_sig_bytes(token, fn):
    h, p, s = _segments(token)
    return f"{h}.{p}.{b64url(fn(b64url_decode(s)))}"


def _standard_alphabet():
    # Pick a token whose signature needs "-" or "_", then spell it with "+" and "/".
    for i in range(200):
        t = mint("RS256", claims(sub=f"user-{i}"))
        h, p, s = _segments(t)
        if "-" in s or "_" in s:
            return f"{h}.{p}.{s.replace('-', '+').replace('_', '/')}"
    raise AssertionError("no signature with - or _")


def _nonzero_trailing_bits():
    # A 256-byte signature is 342 characters; the last one carries 4 unused bits.
    h, p, s = _segments(mint("RS256"))
    assert len(s) % 4 == 2
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(s[-1]) + 1]
    return f"{h}.{p}.{s[:-1]}{last}"


def _length_mod4_is_1():
    h, p, s = _segments(mint("RS256"))
    return f"{h}.{p}.{s}AAA"


def _padded(segment_index):
    parts = _segments(mint("RS256", claims(x="ab")))
    seg = parts[segment_index]
    parts[segment_index] = seg + "=" * (-len(seg) % 4 or 4)
    return ".".join(parts)


def _big_token():
    return mint("RS256", claims(blob="x" * 64 * 1024))


# Each case: (id, token builder, expected reason). All run against one key set and one configuration.
ATTACKS = [
    ("alg-none", lambda: _unsigned({"alg": "none", "kid": "rsa-0"}), "jwt_alg_not_allowed"),
    ("alg-None", lambda: _unsigned({"alg": "None"}), "jwt_alg_not_allowed"),
    ("alg-none-with-sig", lambda: _unsigned({"alg": "none"}) + "c2ln", "jwt_alg_not_allowed"),
    ("alg-missing", lambda: _unsigned({"kid": "rsa-0"}) + "c2ln", "jwt_malformed"),
    ("hs256-rsa-pem-secret", lambda: _hs_with_secret({"alg": "HS256", "kid": "rsa-0"}, _rsa_public("pem")),
     "jwt_alg_not_allowed"),
    ("hs256-rsa-der-secret", lambda: _hs_with_secret({"alg": "HS256", "kid": "rsa-0"}, _rsa_public("der")),
     "jwt_alg_not_allowed"),
    ("hs256-rsa-pem-no-kid", lambda: _hs_with_secret({"alg": "HS256"}, _rsa_public("pem")), "jwt_alg_not_allowed"),
    ("es256-with-rsa-kid", lambda: sign_raw("ES256", {"alg": "ES256", "kid": "rsa-0"}, claims()),
     "jwt_alg_not_allowed"),
    ("stripped-signature", lambda: mint("RS256").rsplit(".", 1)[0] + ".", "jwt_bad_signature"),
    ("two-segments", lambda: mint("RS256").rsplit(".", 1)[0], "jwt_malformed"),
    ("five-segments-jwe", lambda: mint("RS256") + ".a.b", "jwt_malformed"),
    ("empty-header", lambda: "." + mint("RS256").split(".", 1)[1], "jwt_malformed"),
    ("header-not-json", lambda: b64url(b"not json") + "." + mint("RS256").split(".", 1)[1], "jwt_malformed"),
    ("truncated-signature", lambda: _with_sig_bytes(mint("RS256"), lambda s: s[:-3]), "jwt_bad_signature"),
    ("extended-signature", lambda: _with_sig_bytes(mint("RS256"), lambda s: s + b"\0"), "jwt_bad_signature"),
    ("flipped-signature-bit", lambda: _with_sig_bytes(mint("RS256"), lambda s: bytes([s[0] ^ 1]) + s[1:]),
     "jwt_bad_signature"),
    ("modified-payload", lambda: ".".join([_segments(mint("RS256"))[0],
                                           b64url(json.dumps(claims(scope="admin")).encode()),
                                           _segments(mint("RS256"))[2]]), "jwt_bad_signature"),
    ("other-key-same-kid", lambda: sign_raw("RS256", RSA_HDR, claims(), index=1), "jwt_bad_signature"),
    ("exp-past", lambda: mint("RS256", claims(exp=NOW - 3600)), "jwt_expired"),
    ("exp-string", lambda: mint("RS256", claims(exp=str(NOW + 3600))), "jwt_malformed"),
    ("nbf-future", lambda: mint("RS256", claims(nbf=NOW + 3600)), "jwt_not_yet_valid"),
    ("iat-future", lambda: mint("RS256", claims(iat=NOW + 3600)), "jwt_not_yet_valid"),
    ("wrong-iss", lambda: mint("RS256", claims(iss="https://evil.example.com/")), "jwt_bad_issuer"),
    ("iss-with-trailing-change", lambda: mint("RS256", claims(iss=ISSUER.rstrip("/"))), "jwt_bad_issuer"),
    ("missing-iss", lambda: mint("RS256", claims(iss=None)), "jwt_bad_issuer"),
    ("wrong-aud", lambda: mint("RS256", claims(aud="cats")), "jwt_bad_audience"),
    ("wrong-aud-array", lambda: mint("RS256", claims(aud=["cats", "dogs"])), "jwt_bad_audience"),
    ("missing-aud", lambda: mint("RS256", claims(aud=None)), "jwt_bad_audience"),
    ("unknown-kid", lambda: sign_raw("RS256", {"alg": "RS256", "kid": "nope"}, claims()), "jwt_unknown_kid"),
    ("kid-not-string", lambda: sign_raw("RS256", {"alg": "RS256", "kid": 7}, claims()), "jwt_malformed"),
    ("enc-key-ignored", lambda: sign_raw("RS256", {"alg": "RS256", "kid": "enc-key"}, claims(), index=2),
     "jwt_unknown_kid"),
    ("jwk-alg-pins-rs256", lambda: sign_raw("PS256", {"alg": "PS256", "kid": "pinned"}, claims(), index=3),
     "jwt_alg_not_allowed"),
    ("unknown-crit", lambda: sign_raw("RS256", {"alg": "RS256", "kid": "rsa-0", "crit": ["x-foo"], "x-foo": 1},
                                      claims()), "jwt_crit"),
    ("crit-exp", lambda: sign_raw("RS256", {"alg": "RS256", "kid": "rsa-0", "crit": ["exp"]}, claims()), "jwt_crit"),
    ("padded-header", lambda: _padded(0), "jwt_bad_encoding"),
    ("padded-payload", lambda: _padded(1), "jwt_bad_encoding"),
    ("padded-signature", lambda: _padded(2), "jwt_bad_encoding"),
    ("standard-alphabet", _standard_alphabet, "jwt_bad_encoding"),
    ("nonzero-trailing-bits", _nonzero_trailing_bits, "jwt_bad_encoding"),
    ("length-mod-4-is-1", _length_mod4_is_1, "jwt_bad_encoding"),
    ("whitespace", lambda: mint("RS256").replace(".", ". ", 1), "jwt_bad_encoding"),
    ("64kb-token", _big_token, "jwt_too_large"),
    ("missing-kid-several-keys", lambda: mint("RS256", kid=None), "jwt_kid_required"),
    ("exp-nan", lambda: sign_raw("RS256", RSA_HDR, '{"sub":"u","iss":"%s","aud":"pets","exp":NaN}' % ISSUER),
     "jwt_malformed"),
    ("payload-array", lambda: sign_raw("RS256", RSA_HDR, [1, 2]), "jwt_malformed"),
    ("missing-required-claim", lambda: mint("RS256", claims(sub=None)), "jwt_missing_claim"),
]

ATTACK_KEYS = jwks_of(
    public_jwk("rsa", 0),
    public_jwk("rsa", 1, kid="rsa-1"),
    public_jwk("rsa", 2, kid="enc-key", use="enc"),
    public_jwk("rsa", 3, kid="pinned", alg="RS256"),
    public_jwk("p256", 0),
)
ATTACK_CONF = dict(CONF, required_claims=["sub"])


@pytest.mark.parametrize("case", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack(lua, case):
    _, build, expected = case
    r = verify_one(lua, ATTACK_KEYS, build(), **ATTACK_CONF)
    assert r["ok"] is False
    assert r["reason"] == expected, r


def test_attack_suite_controls(lua):
    """The same keys and configuration accept the honest tokens the attacks were made from."""
    mark = lua.log_mark()
    tokens = [
        mint("RS256"),
        mint("RS256", index=1, kid="rsa-1"),
        mint("RS256", index=3, kid="pinned"),
        mint("ES256"),
        # The only P-256 key of the set: unambiguous without a kid, since
        # typed keys of other algorithms are never tried for ES256.
        mint("ES256", kid=None),
        # Relative to now, not to import time: the suite may run for minutes.
        mint("RS256", claims(exp=int(time.time()) - 30)),  # within the leeway
        mint("RS256", claims(nbf=int(time.time()) + 30)),
        mint("RS256", claims(aud=["cats", "pets"])),
        mint("RS256", claims(aud=None, client_id="pets")),
        mint("RS256", claims(exp=None)),  # exp is optional
    ]
    results = verify_tokens(lua, ATTACK_KEYS, tokens, **ATTACK_CONF)
    assert [r["reason"] for r in results] == [None] * len(tokens)
    assert lua.lua_errors(since=mark) == ""


def test_algorithm_allow_list(lua):
    tokens = [mint("RS256"), mint("ES256"), mint("PS256")]
    results = verify_tokens(lua, all_keys(), tokens, algorithms=["RS256"], **CONF)
    assert [r["reason"] for r in results] == [None, "jwt_alg_not_allowed", "jwt_alg_not_allowed"]


def test_no_issuer_or_audience_configured_accepts_any(lua):
    token = mint("ES256", claims(iss="anyone", aud="anything"))
    assert verify_one(lua, all_keys(), token)["reason"] is None


def test_configuration_errors(lua):
    got = lua.run("""
        local jwt = require "gwc.jwt"
        local jwks = require "gwc.jwks"
        local set = assert(jwks.new{ name = "cfg", keys = { keys = {
            { kty = "oct", k = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0" } } } })
        local out = {}
        local function try(conf)
            local v, err = jwt.new(conf)
            out[#out + 1] = v and "ok" or err
        end
        try{ keys = set, algorithms = { "none" } }
        try{ keys = set, algorithms = {} }
        try{ keys = set, algorithms = { "HS256" }, leeway = -1 }
        try{ algorithms = { "HS256" } }
        try{ keys = set, algorithms = { "HS256" } }
        local bad, err = jwks.new{ name = "bad", keys = { keys = { { kty = "RSA", n = "AQAB", e = "AQAB" } } } }
        out[#out + 1] = bad and "ok" or err
        return out
    """)
    assert got[:4] != ["ok"] * 4 and "ok" not in got[:4]
    assert "none" in got[0]
    assert got[4] == "ok"
    assert got[5].startswith("key 1")


def test_cached_verification_is_returned_and_expires(lua):
    exp = int(time.time()) + 2
    token = mint("HS256", claims(exp=exp))
    got = lua.run(f"""
        local jwks = require "gwc.jwks"
        local jwt = require "gwc.jwt"
        local input = {lua_value({"jwks": all_keys(), "token": token})}
        local set = assert(jwks.new{{ name = "cache", keys = input.jwks }})
        local v = assert(jwt.new{{ keys = set, algorithms = {{ "HS256" }}, leeway = 0 }})
        local strict = assert(jwt.new{{ keys = set, algorithms = {{ "HS256" }}, audiences = {{ "cats" }} }})
        local first = v:verify(input.token)
        local second = v:verify(input.token)
        local _, other = strict:verify(input.token)
        ngx.sleep(math.max(0, {exp} - ngx.now()) + 1.1)
        ngx.update_time()
        local third, reason = v:verify(input.token)
        return {{ same = first ~= nil and first == second, other = other, third = third == nil, reason = reason }}
    """)
    assert got == {"same": True, "other": "jwt_bad_audience", "third": True, "reason": "jwt_expired"}


def test_has_scopes(lua):
    got = lua.run("""
        local has = require("gwc.jwt").has_scopes
        local a = { scope = "pets:read pets:write" }
        local b = { scp = { "pets:read", "admin" } }
        local c = { scp = "pets:read  pets:delete" }
        return {
            has(a, { "pets:read" }), has(a, { "pets:read", "pets:write" }), has(a, { "admin" }),
            has(b, { "admin", "pets:read" }), has(b, { "pets:write" }),
            has(c, { "pets:delete" }), has({}, { "x" }), has({}, {}), has(a, { "pets:read" }),
        }
    """)
    assert got == [True, True, False, True, False, True, False, True, True]


def test_non_string_token(lua):
    mark = lua.log_mark()
    got = lua.run("""
        local jwks = require "gwc.jwks"
        local jwt = require "gwc.jwt"
        local set = assert(jwks.new{ name = "ns", keys = { keys = {
            { kty = "oct", k = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0" } } } })
        local v = assert(jwt.new{ keys = set, algorithms = { "HS256" } })
        local _, a = v:verify(nil)
        local _, b = v:verify(42)
        local _, c = v:verify("")
        return { a, b, c }
    """)
    assert got == ["jwt_malformed", "jwt_malformed", "jwt_malformed"]
    assert lua.lua_errors(since=mark) == ""
