"""gwc.crypto inside nginx: digests, HMAC, key construction from JWK members and signature checks."""
import base64
import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from jose_util import b64url, b64url_decode, lua_value, private_key

# RFC 7515 appendix A (the same signing input for A.2 and A.3).
RFC7515_A1_TOKEN = (
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
)
RFC7515_A1_JWK = {"kty": "oct",
                  "k": "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}
RFC7515_A2_TOKEN = (
    "eyJhbGciOiJSUzI1NiJ9"
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr"
    "7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi"
    "12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypG"
    "lUPQGe77Rw"
)
RFC7515_A2_JWK = {
    "kty": "RSA", "e": "AQAB",
    "n": "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd"
         "2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEM"
         "a2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAc"
         "DTW9gb54h4FRWyuXpoQ",
}
RFC7515_A3_TOKEN = (
    "eyJhbGciOiJFUzI1NiJ9"
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
)
RFC7515_A3_JWK = {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                  "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
# RFC 8037 appendix A.4: the payload is plain text, not a claims set.
RFC8037_A4_TOKEN = (
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
    ".hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)
RFC8037_A4_JWK = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}


def crypto_verify(lua, cases):
    """cases: list of {jwk, alg, token}; returns per case [built, ok, err] from gwc.crypto directly."""
    chunk = f"""
        local crypto = require "gwc.crypto"
        local b64 = require("ngx.base64").decode_base64url
        local cases = {lua_value(cases)}
        local out = {{}}
        for i, c in ipairs(cases) do
            local j = c.jwk
            local key, err
            if j.kty == "RSA" then key, err = crypto.rsa_key(b64(j.n), b64(j.e))
            elseif j.kty == "EC" then key, err = crypto.ec_key(j.crv, b64(j.x), b64(j.y))
            elseif j.kty == "OKP" then key, err = crypto.ed25519_key(b64(j.x))
            else key, err = crypto.hmac_key(b64(j.k)) end
            if not key then
                out[i] = {{ false, false, err }}
            else
                local t = c.token
                local last = t:find(".", t:find(".", 1, true) + 1, true)
                local sig = b64(t:sub(last + 1))
                local ok, why = key:verify(c.alg, t, last - 1, sig)
                out[i] = {{ true, ok, why or "" }}
            end
        end
        return out
    """
    return lua.run(chunk)


@pytest.mark.parametrize("name,fn", [("sha256", hashlib.sha256), ("sha384", hashlib.sha384),
                                     ("sha512", hashlib.sha512)])
def test_digests_match_hashlib(lua, name, fn):
    inputs = ["", "abc", "x" * 1000, "\u00e9t\u00e9"]
    got = lua.run(f"""
        local crypto = require "gwc.crypto"
        local out = {{}}
        for i, s in ipairs({lua_value(inputs)}) do
            out[i] = ngx.encode_base64(crypto.{name}(s))
        end
        return out
    """)
    assert got == [base64.b64encode(fn(s.encode()).digest()).decode() for s in inputs]


@pytest.mark.parametrize("name", ["sha256", "sha384", "sha512"])
def test_hmac_matches_python(lua, name):
    # Keys shorter than, equal to and longer than the block size.
    pairs = [["k", "data"], ["k" * 64, "x" * 300], ["K" * 200, ""]]
    got = lua.run(f"""
        local crypto = require "gwc.crypto"
        local out = {{}}
        for i, p in ipairs({lua_value(pairs)}) do
            out[i] = ngx.encode_base64(crypto.hmac("{name}", p[1], p[2]))
        end
        return out
    """)
    assert got == [base64.b64encode(hmac.new(k.encode(), d.encode(), name).digest()).decode() for k, d in pairs]


def test_constant_time_equal(lua):
    got = lua.run("""
        local eq = require("gwc.crypto").equal
        return { eq("abc", "abc"), eq("abc", "abd"), eq("abc", "ab"), eq("", "") }
    """)
    assert got == [True, False, False, True]


def test_rfc_examples_verify_at_crypto_level(lua):
    cases = [
        {"jwk": RFC7515_A1_JWK, "alg": "HS256", "token": RFC7515_A1_TOKEN},
        {"jwk": RFC7515_A2_JWK, "alg": "RS256", "token": RFC7515_A2_TOKEN},
        {"jwk": RFC7515_A3_JWK, "alg": "ES256", "token": RFC7515_A3_TOKEN},
        {"jwk": RFC8037_A4_JWK, "alg": "EdDSA", "token": RFC8037_A4_TOKEN},
    ]
    assert crypto_verify(lua, cases) == [[True, True, ""]] * 4


def test_rfc_examples_fail_when_altered(lua):
    def flip_payload(token):
        h, p, s = token.split(".")
        return ".".join([h, p[:-2] + ("A" if p[-2] != "A" else "B") + p[-1], s])

    cases = [
        {"jwk": RFC7515_A1_JWK, "alg": "HS256", "token": flip_payload(RFC7515_A1_TOKEN)},
        {"jwk": RFC7515_A2_JWK, "alg": "RS256", "token": flip_payload(RFC7515_A2_TOKEN)},
        {"jwk": RFC7515_A3_JWK, "alg": "ES256", "token": flip_payload(RFC7515_A3_TOKEN)},
        {"jwk": RFC8037_A4_JWK, "alg": "EdDSA", "token": flip_payload(RFC8037_A4_TOKEN)},
        # The right signature checked under another algorithm of the same key family.
        {"jwk": RFC7515_A2_JWK, "alg": "PS256", "token": RFC7515_A2_TOKEN},
        {"jwk": RFC7515_A2_JWK, "alg": "RS384", "token": RFC7515_A2_TOKEN},
        {"jwk": RFC7515_A1_JWK, "alg": "HS384", "token": RFC7515_A1_TOKEN},
    ]
    assert crypto_verify(lua, cases) == [[True, False, "signature"]] * len(cases)


def test_key_family_fixes_the_algorithms(lua):
    # An EC P-256 key cannot verify ES384 or RS256, an RSA key cannot do HS256.
    cases = [
        {"jwk": RFC7515_A3_JWK, "alg": "ES384", "token": RFC7515_A3_TOKEN},
        {"jwk": RFC7515_A3_JWK, "alg": "RS256", "token": RFC7515_A3_TOKEN},
        {"jwk": RFC7515_A2_JWK, "alg": "HS256", "token": RFC7515_A2_TOKEN},
        {"jwk": RFC8037_A4_JWK, "alg": "ES256", "token": RFC8037_A4_TOKEN},
    ]
    assert crypto_verify(lua, cases) == [[True, False, "alg"]] * len(cases)


def _raw_ecdsa(key, curve_bytes, msg, hash_alg):
    r, s = decode_dss_signature(key.sign(msg, ec.ECDSA(hash_alg)))
    return r.to_bytes(curve_bytes, "big") + s.to_bytes(curve_bytes, "big"), r, s


def _ec_jwk(key, crv, size):
    nums = key.public_key().public_numbers()
    return {"kty": "EC", "crv": crv, "x": b64url(nums.x.to_bytes(size, "big")),
            "y": b64url(nums.y.to_bytes(size, "big"))}


@pytest.mark.parametrize("family,crv,size,alg,hash_alg", [
    ("p256", "P-256", 32, "ES256", hashes.SHA256()),
    ("p384", "P-384", 48, "ES384", hashes.SHA384()),
    ("p521", "P-521", 66, "ES512", hashes.SHA512()),
])
def test_ecdsa_signatures_with_short_or_high_bit_integers(lua, family, crv, size, alg, hash_alg):
    """r or s with leading zero bytes, or with the top bit set, must survive the r||s to DER conversion."""
    key = private_key(family)
    header = b64url(json.dumps({"alg": alg}).encode())
    wanted = {"r_short": None, "s_short": None, "r_high": None, "s_high": None, "plain": None}
    i = 0
    while any(v is None for v in wanted.values()) and i < 5000:
        payload = b64url(f"message {i}".encode())
        signing_input = f"{header}.{payload}"
        raw, r, s = _raw_ecdsa(key, size, signing_input.encode(), hash_alg)
        kinds = []
        r_bytes, s_bytes = raw[:size], raw[size:]
        if r_bytes[0] == 0:
            kinds.append("r_short")
        if s_bytes[0] == 0:
            kinds.append("s_short")
        # The first significant byte has its top bit set: DER needs a 0x00 in front.
        if r_bytes.lstrip(b"\0")[0] >= 0x80:
            kinds.append("r_high")
        if s_bytes.lstrip(b"\0")[0] >= 0x80:
            kinds.append("s_high")
        kinds.append("plain")
        for k in kinds:
            if wanted[k] is None:
                wanted[k] = f"{signing_input}.{b64url(raw)}"
        i += 1
    assert all(wanted.values()), wanted
    jwk = _ec_jwk(key, crv, size)
    tokens = list(wanted.values())
    # Wrong lengths: one byte short, one byte long, DER instead of raw.
    signing_input = f"{header}.{b64url(b'x')}"
    raw, _, _ = _raw_ecdsa(key, size, signing_input.encode(), hash_alg)
    der = key.sign(signing_input.encode(), ec.ECDSA(hash_alg))
    bad = [f"{signing_input}.{b64url(raw[:-1])}", f"{signing_input}.{b64url(raw + b'0')}",
           f"{signing_input}.{b64url(der)}"]
    got = crypto_verify(lua, [{"jwk": jwk, "alg": alg, "token": t} for t in tokens + bad])
    assert got == [[True, True, ""]] * len(tokens) + [[True, False, "signature"]] * len(bad)


def test_bad_key_material_is_refused(lua):
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers()
    good = _ec_jwk(private_key("p256"), "P-256", 32)
    off_curve = dict(good, y=b64url((int.from_bytes(b64url_decode(good["y"]), "big") ^ 1).to_bytes(32, "big")))
    cases = [
        {"jwk": {"kty": "RSA", "n": b64url(small.n.to_bytes(128, "big")), "e": "AQAB"}, "alg": "RS256",
         "token": RFC7515_A2_TOKEN},
        {"jwk": off_curve, "alg": "ES256", "token": RFC7515_A3_TOKEN},
        {"jwk": dict(good, x=good["x"][:-2]), "alg": "ES256", "token": RFC7515_A3_TOKEN},
        {"jwk": dict(good, crv="P-192"), "alg": "ES256", "token": RFC7515_A3_TOKEN},
        {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64url(b"\x01" * 31)}, "alg": "EdDSA",
         "token": RFC8037_A4_TOKEN},
        {"jwk": {"kty": "oct", "k": ""}, "alg": "HS256", "token": RFC7515_A1_TOKEN},
    ]
    got = crypto_verify(lua, cases)
    assert [g[0] for g in got] == [False] * len(cases), got
    assert "2048" in got[0][2]


def test_pss_uses_digest_length_salt(lua):
    """PS256 with salt = hash length verifies; the same key's maximum-length salt does not (RFC 7518 3.5)."""
    mark = lua.log_mark()
    key = private_key("rsa")
    nums = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "n": b64url(nums.n.to_bytes(256, "big")), "e": "AQAB"}
    header = b64url(json.dumps({"alg": "PS256"}).encode())
    signing_input = f"{header}.{b64url(b'{}')}"
    good = key.sign(signing_input.encode(), padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    maxsalt = key.sign(signing_input.encode(), padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH),
                       hashes.SHA256())
    mgf_sha1 = key.sign(signing_input.encode(), padding.PSS(padding.MGF1(hashes.SHA1()), 32), hashes.SHA256())
    got = crypto_verify(lua, [{"jwk": jwk, "alg": "PS256", "token": f"{signing_input}.{b64url(s)}"}
                              for s in (good, maxsalt, mgf_sha1)])
    assert got == [[True, True, ""], [True, False, "signature"], [True, False, "signature"]]
    assert lua.lua_errors(since=mark) == ""


@pytest.mark.parametrize("password,salt,iterations", [("correct horse", b"saltsalt", 1000), ("", b"\x00" * 16, 1), ("é" * 40, b"s" * 16, 10000)])
def test_pbkdf2_sha256_matches_python(lua, password, salt, iterations):
    """HTTP basic credentials are PBKDF2-SHA256, written by `gwc keys passwd` with hashlib."""
    import base64
    import hashlib

    expected = base64.b64encode(hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)).decode()
    got = lua.run(
        f"""local c = require 'gwc.crypto'
        return ngx.encode_base64(c.pbkdf2_sha256(ngx.decode_base64('{base64.b64encode(password.encode()).decode()}'),
            ngx.decode_base64('{base64.b64encode(salt).decode()}'), {iterations}, 32))"""
    )
    assert got == expected
