"""Keys, JWKS documents and tokens for the JWT runtime tests, all real (PyJWT + cryptography)."""
from __future__ import annotations

import base64
import functools
import json
import time
from typing import Any, Dict, List, Optional

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

ALGS = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
        "ES256", "ES384", "ES512", "EdDSA"]

HMAC_SECRET = b"gwc-test-secret-of-at-least-64-bytes-for-hs512-0123456789abcdefgh"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@functools.lru_cache(maxsize=None)
def private_key(family: str, index: int = 0):
    """One cached private key per family and index ("rsa", "p256", "p384", "p521", "ed25519", "hmac")."""
    if family == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if family == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if family == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if family == "p521":
        return ec.generate_private_key(ec.SECP521R1())
    if family == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if family == "hmac":
        return HMAC_SECRET + str(index).encode()
    raise ValueError(family)


FAMILY = {"HS": "hmac", "RS": "rsa", "PS": "rsa", "ES256": "p256", "ES384": "p384", "ES512": "p521",
          "EdDSA": "ed25519"}


def family_of(alg: str) -> str:
    return FAMILY.get(alg) or FAMILY[alg[:2]]


def public_jwk(family: str, index: int = 0, kid: Optional[str] = None, **extra) -> Dict[str, Any]:
    key = private_key(family, index)
    if family == "hmac":
        jwk = HMACAlgorithm.to_jwk(key, as_dict=True)
    elif family == "rsa":
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    elif family == "ed25519":
        jwk = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk = dict(jwk)
    jwk.pop("key_ops", None)
    jwk["kid"] = kid if kid is not None else f"{family}-{index}"
    jwk.update(extra)
    return {k: v for k, v in jwk.items() if v is not None}


def jwks_of(*jwks: Dict[str, Any]) -> Dict[str, Any]:
    return {"keys": list(jwks)}


def claims(**overrides) -> Dict[str, Any]:
    now = int(time.time())
    base = {"iss": "https://id.example.com/", "aud": "pets", "sub": "user-1", "iat": now, "exp": now + 600,
            "scope": "pets:read pets:write"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(alg: str, payload: Optional[Dict[str, Any]] = None, index: int = 0, kid: Optional[str] = "default",
         headers: Optional[Dict[str, Any]] = None) -> str:
    family = family_of(alg)
    if kid == "default":
        kid = f"{family}-{index}"
    hdr = dict(headers or {})
    if kid is not None:
        hdr["kid"] = kid
    return jwt.encode(claims() if payload is None else payload, private_key(family, index), algorithm=alg,
                      headers=hdr)


def sign_raw(alg: str, header: Dict[str, Any], payload: Any, index: int = 0) -> str:
    """A token with exactly this header, and this payload (a str is used verbatim): attacks need full control."""
    h = b64url(json.dumps(header, separators=(",", ":")).encode())
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    p = b64url(text.encode())
    signing_input = f"{h}.{p}".encode()
    algo = jwt.get_algorithm_by_name(alg)
    key = private_key(family_of(alg), index)
    return f"{h}.{p}.{b64url(algo.sign(signing_input, algo.prepare_key(key)))}"


def lua_value(obj: Any) -> str:
    """A Lua expression for a JSON value, immune to quoting."""
    data = base64.b64encode(json.dumps(obj).encode()).decode()
    return f'require("cjson.safe").decode(ngx.decode_base64("{data}"))'


def verify_tokens(lua, jwks: Dict[str, Any], tokens: List[str], **conf) -> List[Dict[str, Any]]:
    """Builds an inline key set and a verifier inside nginx and verifies each token in turn."""
    conf.setdefault("algorithms", ALGS)
    conf = {k: v for k, v in conf.items() if v is not None}
    chunk = f"""
        local cjson = require "cjson.safe"
        local jwks = require "gwc.jwks"
        local jwt = require "gwc.jwt"
        local input = {lua_value({"jwks": jwks, "conf": conf, "tokens": tokens})}
        local set, err = jwks.new({{ name = "inline", keys = input.jwks }})
        if not set then return {{ error = err }} end
        input.conf.keys = set
        local v, verr = jwt.new(input.conf)
        if not v then return {{ error = verr }} end
        local out = {{}}
        for i, t in ipairs(input.tokens) do
            local c, reason, detail = v:verify(t)
            out[i] = {{ ok = c ~= nil, claims = c or cjson.null, reason = reason or cjson.null,
                        detail = detail or cjson.null }}
        end
        return out
    """
    result = lua.run(chunk)
    if isinstance(result, dict) and "error" in result:
        raise AssertionError(result["error"])
    return result


def verify_one(lua, jwks, token, **conf) -> Dict[str, Any]:
    return verify_tokens(lua, jwks, [token], **conf)[0]
