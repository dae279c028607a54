"""RFC 7520 ("JOSE Cookbook") signature examples verify through gwc.crypto.

The vectors are read at test time from the `tests-cookbook.py` file that the
jwcrypto sdist on PyPI ships (RFC 7520 transcribed), not vendored here. The
file is parsed with `ast`, never executed. The payload is a quotation, not a
claims set, so the check is at the signature level, as for RFC 8037 A.4.
"""
import ast
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from test_crypto import crypto_verify

JWCRYPTO_VERSION = "1.6.1"
# section -> (compact token, key variable, alg); 4.2 is PS384, whose
# signatures are randomised but still verify.
EXAMPLES = {
    "4.1 RS256": ("JWS_compact_4_1_3", "RSA_Public_Key_3_3", "RS256"),
    "4.2 PS384": ("JWS_compact_4_2_3", "RSA_Public_Key_3_3", "PS384"),
    "4.3 ES512": ("JWS_compact_4_3_3", "EC_Public_Key_3_1", "ES512"),
    "4.4 HS256": ("JWS_compact_4_4_3", "Symmetric_Key_MAC_3_5", "HS256"),
}


def _cookbook() -> dict:
    cache = Path(os.environ.get("GWC_SUITE_CACHE") or Path.home() / ".cache" / "gwc")
    source = cache / f"jwcrypto-{JWCRYPTO_VERSION}-tests-cookbook.py"
    if not source.exists():
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                               f"jwcrypto=={JWCRYPTO_VERSION}", "-d", str(cache)], capture_output=True, text=True, timeout=120)
        sdist = cache / f"jwcrypto-{JWCRYPTO_VERSION}.tar.gz"
        if proc.returncode != 0 or not sdist.exists():
            pytest.skip(f"jwcrypto sdist (RFC 7520 vectors) not downloadable: {proc.stderr[-300:]}")
        with tarfile.open(sdist) as tar:
            member = tar.extractfile(f"jwcrypto-{JWCRYPTO_VERSION}/jwcrypto/tests-cookbook.py")
            source.write_bytes(member.read())
    values: dict = {}
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = _evaluate(node.value, values)
            except ValueError:
                continue  # calls and the like: not a vector
    return values


def _evaluate(node, names: dict):
    """Literals, names bound earlier, `+` of strings and `%` formatting: all the vectors use."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_evaluate(e, names) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_evaluate(k, names): _evaluate(v, names) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _evaluate(node.left, names), _evaluate(node.right, names)
        if isinstance(left, str) and isinstance(right, str):
            return left + right
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        fmt, args = _evaluate(node.left, names), _evaluate(node.right, names)
        if isinstance(fmt, str):
            return fmt % (tuple(args) if isinstance(args, list) else args)
    raise ValueError(ast.dump(node)[:80])


@pytest.fixture(scope="module")
def cookbook():
    return _cookbook()


def _public(jwk: dict) -> dict:
    return {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}


def test_rfc7520_signature_examples_verify(lua, cookbook):
    cases = [{"jwk": _public(cookbook[key]), "alg": alg, "token": cookbook[token]} for token, key, alg in EXAMPLES.values()]
    assert crypto_verify(lua, cases) == [[True, True, ""]] * len(cases)


def test_rfc7520_examples_fail_when_the_payload_changes(lua, cookbook):
    cases = []
    for token_name, key, alg in EXAMPLES.values():
        h, p, s = cookbook[token_name].split(".")
        altered = ".".join([h, p[:-3] + ("A" if p[-3] != "A" else "B") + p[-2:], s])
        cases.append({"jwk": _public(cookbook[key]), "alg": alg, "token": altered})
    assert crypto_verify(lua, cases) == [[True, False, "signature"]] * len(cases)
