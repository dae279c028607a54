"""Key material and token minting for the auth suite.

A token is described as data (see cases/*.yaml):

    token:
      alg: RS256            # any JWS alg, or "none"
      kid: k1               # header kid; null to omit it
      key: rsa              # which key signs (default: the one for alg)
      claims: {sub: bob}    # merged over the defaults (iss, aud, sub, iat, exp)
      drop: [exp]           # default claims to leave out
      exp_in: -3600         # exp relative to now (seconds)
      nbf_in: 3600          # nbf relative to now
      header: {crit: [x]}   # extra protected-header members
      pad: 65536            # grow the token to about this many bytes (a `pad` claim)
      mutate: strip_signature

Mutations are the attacks: strip_signature, truncate_signature,
modify_payload, flip_signature, padded_base64, standard_base64,
hs_with_public_key (HS256 keyed with the RSA public key PEM: alg confusion),
alg_none, alg_none_with_signature, whitespace.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://issuer.test/"
AUDIENCE = "gwc-tests"
HMAC_SECRET = "gwc-test-hmac-secret-0123456789abcdef-0123456789abcdef-not-a-real-one"  # >= 64 bytes: HS512
HMAC_ENV = "GWC_TEST_JWT_SECRET"

ALG_KEY = {
    "RS256": "rsa", "RS384": "rsa", "RS512": "rsa",
    "PS256": "rsa", "PS384": "rsa", "PS512": "rsa",
    "ES256": "ec256", "ES384": "ec384", "ES512": "ec521",
    "EdDSA": "ed25519",
    "HS256": "hmac", "HS384": "hmac", "HS512": "hmac",
}
# kid of each key in the JWKS documents the suite serves
KEY_KID = {"rsa": "k1", "rsa2": "k2", "ec256": "ec256", "ec384": "ec384", "ec521": "ec521", "ed25519": "ed", "hmac": None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class KeyRing:
    private: Dict[str, Any]

    @classmethod
    def generate(cls) -> "KeyRing":
        return cls({
            "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rsa3": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec256": ec.generate_private_key(ec.SECP256R1()),
            "ec384": ec.generate_private_key(ec.SECP384R1()),
            "ec521": ec.generate_private_key(ec.SECP521R1()),
            "ed25519": ed25519.Ed25519PrivateKey.generate(),
        })

    def signing_key(self, name: str):
        if name == "hmac":
            return HMAC_SECRET.encode()
        return self.private[name]

    def jwk(self, name: str, kid: Optional[str] = None) -> dict:
        pub = self.private[name].public_key()
        if name.startswith("rsa"):
            data = json.loads(RSAAlgorithm.to_jwk(pub))
        elif name.startswith("ec"):
            data = json.loads(ECAlgorithm.to_jwk(pub))
        else:
            data = json.loads(OKPAlgorithm.to_jwk(pub))
        data["kid"] = kid or KEY_KID.get(name) or name
        return data

    def jwks(self, names, kids: Optional[Dict[str, str]] = None) -> dict:
        kids = kids or {}
        return {"keys": [self.jwk(n, kids.get(n)) for n in names]}

    def public_pem(self, name: str) -> bytes:
        return self.private[name].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def default_claims(now: Optional[int] = None) -> dict:
    now = int(now or time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 600, "scope": "pets:read pets:write"}


def _segments(token: str):
    h, p, s = token.split(".")
    return h, p, s


def _hmac_sign(alg: str, secret: bytes, signing_input: bytes) -> bytes:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return hmac.new(secret, signing_input, digest).digest()


def mint(desc: Dict[str, Any], ring: KeyRing, _attempt: int = 0) -> str:
    desc = dict(desc or {})
    alg = desc.get("alg", "RS256")
    now = int(time.time())
    claims = default_claims(now)
    for name in desc.get("drop") or []:
        claims.pop(name, None)
    if "exp_in" in desc:
        claims["exp"] = now + int(desc["exp_in"])
    if "nbf_in" in desc:
        claims["nbf"] = now + int(desc["nbf_in"])
    if "iat_in" in desc:
        claims["iat"] = now + int(desc["iat_in"])
    claims.update(desc.get("claims") or {})
    if _attempt:
        claims["jti"] = f"attempt-{_attempt}"
    key_name = desc.get("key") or ALG_KEY.get(alg, "rsa")
    header = {"typ": "JWT"}
    kid = desc.get("kid", KEY_KID.get(key_name))
    if kid is not None:
        header["kid"] = kid
    header.update(desc.get("header") or {})
    mutate = desc.get("mutate")

    if desc.get("pad"):
        base = _raw(alg, header, claims, key_name, ring)
        claims["pad"] = "x" * max((int(desc["pad"]) - len(base)) * 3 // 4 - 12, 0)

    if mutate in ("alg_none", "alg_none_with_signature"):
        h = b64url(json.dumps({**header, "alg": "none"}).encode())
        p = b64url(json.dumps(claims).encode())
        if mutate == "alg_none":
            return f"{h}.{p}."
        return f"{h}.{p}.{_raw(alg, header, claims, key_name, ring).split('.')[2]}"
    if mutate == "embedded_jwk":
        # signed by a key the gateway does not know, which the header carries (jwk) and points at (jku, x5u)
        attacker = "rsa2"
        header = {**header, "jwk": ring.jwk(attacker, kid=header.get("kid")), "jku": "http://127.0.0.1:9/jwks.json",
                  "x5u": "http://127.0.0.1:9/cert.pem"}
        return _raw(alg, header, claims, attacker, ring)
    if mutate == "hs_with_public_key":
        h = b64url(json.dumps({**header, "alg": "HS256"}, separators=(",", ":")).encode())
        p = b64url(json.dumps(claims, separators=(",", ":")).encode())
        sig = _hmac_sign("HS256", ring.public_pem(key_name), f"{h}.{p}".encode())
        return f"{h}.{p}.{b64url(sig)}"

    token = _raw(alg, header, claims, key_name, ring)
    h, p, s = _segments(token)
    if mutate is None:
        return token
    if mutate == "strip_signature":
        return f"{h}.{p}."
    if mutate == "truncate_signature":
        return f"{h}.{p}.{s[:-8]}"
    if mutate == "flip_signature":
        raw = bytearray(b64url_decode(s))
        raw[len(raw) // 2] ^= 0x01
        return f"{h}.{p}.{b64url(bytes(raw))}"
    if mutate == "modify_payload":
        body = json.loads(b64url_decode(p))
        body["sub"] = "admin"
        body["scope"] = "admin"
        return f"{h}.{b64url(json.dumps(body, separators=(',', ':')).encode())}.{s}"
    if mutate == "padded_base64":
        # the same bytes, but base64url WITH '=' padding on a segment that needs it
        for seg_name in ("p", "s", "h"):
            seg = {"h": h, "p": p, "s": s}[seg_name]
            if len(seg) % 4:
                padded = seg + "=" * (-len(seg) % 4)
                parts = {"h": h, "p": p, "s": s, seg_name: padded}
                return f"{parts['h']}.{parts['p']}.{parts['s']}"
        if _attempt < 50:
            return mint(desc, ring, _attempt + 1)
        raise RuntimeError("could not make a token whose segments need padding")
    if mutate == "standard_base64":
        # the same bytes in the standard alphabet ('+' and '/' instead of '-' and '_')
        table = str.maketrans("-_", "+/")
        if any(c in s for c in "-_"):
            return f"{h}.{p}.{s.translate(table)}"
        if _attempt < 200:
            return mint(desc, ring, _attempt + 1)
        raise RuntimeError("could not make a signature with '-' or '_'")
    if mutate == "whitespace":
        return f"{h}.{p} .{s}"
    raise ValueError(f"unknown mutation {mutate!r}")


def _raw(alg: str, header: dict, claims: dict, key_name: str, ring: KeyRing) -> str:
    headers = {k: v for k, v in header.items() if k != "alg"}
    if all(isinstance(v, (str, list, dict, bool)) for v in headers.values()) and isinstance(headers.get("kid", ""), str):
        return jwt.encode(claims, ring.signing_key(key_name), algorithm=alg, headers=headers)
    # Headers PyJWT refuses to write (e.g. a numeric kid): sign with its algorithm objects directly.
    algo = jwt.algorithms.get_default_algorithms()[alg]
    h = b64url(json.dumps({"alg": alg, **headers}, separators=(",", ":")).encode())
    p = b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = algo.sign(f"{h}.{p}".encode(), algo.prepare_key(ring.signing_key(key_name)))
    return f"{h}.{p}.{b64url(sig)}"
