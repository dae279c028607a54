"""Session fixtures for the auth suite: key material, a JWKS/OIDC server, an
external authorizer, certificates, an echo backend, and one real nginx per
spec variant (built lazily with the real `gwc build`).

After the session, every gateway's error log must be free of Lua errors and of
`[error]`-or-worse lines that no case declared, and no token or API key sent
during the session may appear in the access or error log.
"""
from __future__ import annotations

import json
import os
import shutil
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict

import pytest

AUTH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(AUTH_DIR.parent / "live"))  # harness.py
sys.path.insert(0, str(AUTH_DIR))

import auth_runner  # noqa: E402
import auth_servers  # noqa: E402
import auth_tokens  # noqa: E402
import harness  # noqa: E402
from gwc import runtime  # noqa: E402
from support import certs  # noqa: E402
from support.processes import Nginx, closed_port, echo_backend, free_port  # noqa: E402

ASYMMETRIC = ["rsa", "ec256", "ec384", "ec521", "ed25519"]


@pytest.fixture(scope="session")
def auth_work():
    """World-readable scratch directory (nginx workers may run as nobody)."""
    path = Path(tempfile.mkdtemp(prefix="gwc-auth-"))
    os.chmod(path, 0o755)
    yield path
    if os.environ.get("GWC_AUTH_KEEP_WORK"):
        print(f"\nauth work dir kept: {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def keyring():
    return auth_tokens.KeyRing.generate()


@pytest.fixture(scope="session")
def mint(keyring) -> Callable[[dict], str]:
    return lambda desc: auth_tokens.mint(desc, keyring)


@pytest.fixture(scope="session")
def backend():
    with echo_backend("A") as port:
        yield port


@pytest.fixture(scope="session")
def jwks(keyring):
    with auth_servers.jwks_server() as state:
        state.set("all", keyring.jwks(ASYMMETRIC))
        state.set("rot", keyring.jwks(["rsa"]))  # k1 only; tests add k2
        state.set("flood", keyring.jwks(["rsa"]))
        pinned = keyring.jwks(["rsa", "ec256", "ed25519"])
        pinned["keys"][0].update(alg="RS512", use="sig")  # k1 may only verify RS512
        pinned["keys"][1].update(use="enc")  # ec256 is an encryption key
        pinned["keys"][2].update(key_ops=["encrypt"])  # ed may not verify
        state.set("pinned", pinned)
        state.set("garbage", {"keys": "not a list", "x": [1, 2, {"kty": "RSA"}]})
        state.set("oidc", keyring.jwks(["rsa3"], {"rsa3": "oidc1"}), issuer="https://oidc.test/")
        yield state


@pytest.fixture(scope="session")
def authz():
    with auth_servers.authorizer_server() as (state, port):
        state.port = port
        yield state


@pytest.fixture(scope="session")
def pki(auth_work):
    """Server and client certificates: a trusted CA and an untrusted one."""
    d = auth_work / "pki"
    d.mkdir()
    os.chmod(d, 0o755)
    ca_path, ca_key, ca_cert = certs.make_ca(d, "gwc auth test CA")
    server_cert, server_key = certs.make_server_cert(d, ca_key, ca_cert, ["localhost", "127.0.0.1"], stem="server")
    client_cert, client_key = certs.make_server_cert(d, ca_key, ca_cert, ["client.test"], stem="client")
    revoked_cert, revoked_key = certs.make_server_cert(d, ca_key, ca_cert, ["revoked.test"], stem="revoked")
    crl = certs.make_crl(d, ca_key, ca_cert, [revoked_cert])
    other = d / "other"
    other.mkdir()
    _, other_key, other_cert = certs.make_ca(other, "gwc untrusted CA")
    rogue_cert, rogue_key = certs.make_server_cert(other, other_key, other_cert, ["rogue.test"], stem="rogue")
    for p in d.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)

    def context(cert=None, key=None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(ca_path))
        if cert:
            ctx.load_cert_chain(str(cert), str(key))
        return ctx

    return {
        "ca": ca_path, "server_cert": server_cert, "server_key": server_key,
        "client_cert": client_cert, "client_key": client_key,
        "crl": crl,
        "contexts": {"none": context(), "client": context(client_cert, client_key), "untrusted": context(rogue_cert, rogue_key),
                     "revoked": context(revoked_cert, revoked_key)},
        "client_x509": client_cert.read_bytes(),
    }


# --------------------------------------------------------------------------- spec variants


def _write_jwks_file(ctx, d: Path) -> dict:
    (d / "jwks.json").write_text(json.dumps(ctx["keyring"].jwks(ASYMMETRIC)))
    return {}


def _write_keys(ctx, d: Path) -> dict:
    path = d / "keys.yaml"
    keys = {
        "alice": auth_runner.new_key(path, "alice", "free"),
        "bob": auth_runner.new_key(path, "bob", "gold"),
        "carol": auth_runner.new_key(path, "carol", "free", expires="2001-01-01T00:00:00Z"),
        "dave": auth_runner.new_key(path, "dave", "gold"),
    }
    proc = auth_runner.gwc_cli("keys", "revoke", "--id", "bob", "--file", str(path))
    assert proc.returncode == 0, proc.stderr
    return {"_keys": keys}


def _write_users(ctx, d: Path) -> dict:
    path = d / "users.yaml"
    for user, password in (("ann", "correct horse battery staple"), ("ben", "s3cr3t:with:colons")):
        proc = auth_runner.gwc_cli("keys", "passwd", "--user", user, "--file", str(path), "--password-stdin", stdin=password + "\n")
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return {}


# name -> (template, prepare(ctx, dir) -> extra placeholders (and "_keys"))
SPECS: Dict[str, tuple] = {
    "jwt": ("jwt.yaml", _write_jwks_file),
    "rotation": ("rotation.yaml", None),
    "requirements": ("requirements.yaml", _write_keys),
    "apikeys": ("apikeys.yaml", _write_keys),
    "apikeys_reload": ("apikeys.yaml", _write_keys),
    "aws": ("aws.yaml", _write_keys),
    "authorizer": ("authorizer.yaml", None),
    "mtls": ("mtls.yaml", None),
    "ip": ("ip.yaml", None),
    "ip_proxy": ("ip_proxy.yaml", None),
    "basic": ("basic.yaml", _write_users),
}


# Errors logged outside any request (timers, e.g. fetching an unreachable
# JWKS in the background) that a spec provokes on purpose. (With
# lua_socket_log_errors off, the gateway reports these itself, at warn.)
BACKGROUND_ERRORS = {"rotation": ("fetch failed: connect to",)}


class AuthPool:
    def __init__(self, ctx: dict):
        self.ctx = ctx
        self.gateways: Dict[str, auth_runner.Gateway] = {}
        self.failures: Dict[str, str] = {}
        self.target = ctx["target"]

    def get(self, spec: str) -> auth_runner.Gateway:
        if spec in self.failures:
            pytest.fail(f"gateway {spec!r} could not start: {self.failures[spec]}", pytrace=False)
        if spec not in self.gateways:
            try:
                self.gateways[spec] = self._start(spec)
            except Exception as exc:
                self.failures[spec] = str(exc)
                raise
        return self.gateways[spec]

    def placeholders(self, port: int, tls_port: int) -> Dict[str, str]:
        c = self.ctx
        pki = c["pki"]
        return {
            "__BACKEND__": str(c["backend"]),
            "__JWKS__": str(c["jwks"].port),
            "__AUTHZ__": str(c["authz"].port),
            "__CLOSED_PORT__": str(c["closed_port"]),
            "__JWKS_INLINE__": json.dumps(c["keyring"].jwks(ASYMMETRIC)),
            "__TLS_PORT__": str(tls_port),
            "__CERT__": str(pki["server_cert"]),
            "__CERT_KEY__": str(pki["server_key"]),
            "__CA__": str(pki["ca"]),
            "__CRL__": str(pki["crl"]),
            "__GATEWAY__": str(port),
        }

    def _start(self, spec: str) -> auth_runner.Gateway:
        template, prepare = SPECS[spec]
        d = self.ctx["work"] / "specs" / spec
        d.mkdir(parents=True)
        extra = prepare(self.ctx, d) if prepare else {}
        keys = extra.pop("_keys", {})
        port, tls_port = free_port(), free_port()
        placeholders = {**self.placeholders(port, tls_port), **extra}
        text = (auth_runner.SPECS_DIR / template).read_text(encoding="utf-8")
        for k, v in placeholders.items():
            text = text.replace(k, v)
        import re

        leftover = re.findall(r"__[A-Z_]+__", text)
        if leftover:
            raise ValueError(f"{template}: unreplaced placeholders {sorted(set(leftover))}")
        spec_file = d / "api.yaml"
        spec_file.write_text(text, encoding="utf-8")
        out_dir = self.ctx["work"] / "out" / spec
        harness.gwc_build(spec_file, out_dir, f"127.0.0.1:{port}", self.target)
        uses_tls = "__TLS_PORT__" in (auth_runner.SPECS_DIR / template).read_text()
        nginx = Nginx(out_dir).start([port, tls_port] if uses_tls else [port])
        return auth_runner.Gateway(spec, port, out_dir, spec_file, nginx, placeholders,
                                   tls_port=tls_port if uses_tls else None, keys=keys,
                                   background_errors=BACKGROUND_ERRORS.get(spec, ()))

    def close(self):
        problems = []
        for gw in self.gateways.values():
            gw.nginx.stop()
        for gw in self.gateways.values():
            for line in harness.unexpected_log_lines(auth_runner.without_background(gw, gw.log_since(0)), gw.allowed_errors):
                problems.append(f"{gw.spec}: {line}")
            # Stopped nginx has flushed its buffered access log: no token or key may be in a log.
            secrets = set(gw.secrets) | set(gw.keys.values())
            for log in (gw.access_log, gw.error_log):
                try:
                    text = log.read_text(errors="replace")
                except OSError:
                    continue
                for secret in secrets:
                    if secret and secret in text:
                        problems.append(f"{gw.spec}: {log.name} contains a credential ({secret[:16]}...)")
        return problems


@pytest.fixture(scope="session")
def gateways(auth_work, keyring, backend, jwks, authz, pki):
    rt, tried = runtime.detect(allow_docker=False)
    if rt is None:
        pytest.skip("no nginx with the Lua module: " + "; ".join(tried))
    old = os.environ.get(auth_tokens.HMAC_ENV)
    os.environ[auth_tokens.HMAC_ENV] = auth_tokens.HMAC_SECRET  # nginx inherits it; `env` in nginx.conf passes it on
    ctx = {"work": auth_work, "keyring": keyring, "backend": backend, "jwks": jwks, "authz": authz, "pki": pki,
           "closed_port": closed_port(), "target": rt.target}
    pool = AuthPool(ctx)
    yield pool
    problems = pool.close()
    if old is None:
        os.environ.pop(auth_tokens.HMAC_ENV, None)
    else:
        os.environ[auth_tokens.HMAC_ENV] = old
    if problems:
        pytest.fail("unexpected lines in the nginx error logs:\n" + "\n".join(problems), pytrace=False)
