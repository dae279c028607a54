"""Stateful auth scenarios that a single request cannot express: JWKS
rotation and the refetch limit (counted at the JWKS server), authorizer
caching (counted at the authorizer), API keys added to a deployed output and
picked up by `nginx -s reload`, the `gwc keys` command line, the exact mTLS
fingerprint, and secrets never reaching the output directory.

Every wait has a deadline; nothing asserts on timing.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import re
import time

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

import auth_runner
import auth_tokens

pytestmark = pytest.mark.live


def _get(gw, mint, path, token=None, headers=None, **extra):
    request = {"path": path, "headers": headers or {}, **extra}
    if token is not None:
        request["token"] = token
    return auth_runner.send(gw, request, mint)


def _until(fn, deadline_s=10.0, interval_s=0.1):
    """Calls fn until it returns a truthy value or the deadline passes; returns the last value."""
    end = time.monotonic() + deadline_s
    while True:
        value = fn()
        if value or time.monotonic() > end:
            return value
        time.sleep(interval_s)


# --------------------------------------------------------------------------- JWKS


def test_jwks_rotation(gateways, mint, jwks, keyring):
    gw = gateways.get("rotation")
    path = "/rot/jwks.json"
    k1 = {"alg": "RS256", "key": "rsa", "kid": "k1", "claims": {"sub": "rot-k1"}}
    k2 = {"alg": "RS256", "key": "rsa2", "kid": "k2", "claims": {"sub": "rot-k2"}}

    first = _get(gw, mint, "/rot", k1)
    auth_runner.check("rotation: k1 accepted", gw, first, {"status": 200, "backend": "A", "upstream_headers": {"X-User": "rot-k1"}})

    refused = _get(gw, mint, "/rot", k2)
    auth_runner.check("rotation: k2 unknown", gw, refused, {"status": 401, "backend": "none", "reason": "jwt_unknown_kid"})

    before = jwks.count(path)
    jwks.set("rot", keyring.jwks(["rsa", "rsa2"]))  # the issuer publishes k2

    # After jwks_min_refetch (1s) an unknown kid may trigger a refetch, and k2 is accepted.
    accepted = _until(lambda: _get(gw, mint, "/rot", k2).result.status == 200, deadline_s=15, interval_s=0.25)
    assert accepted, "a token signed with the newly published k2 was never accepted"
    assert jwks.count(path) > before, "k2 was accepted without the JWKS being fetched again?"
    ok = _get(gw, mint, "/rot", k2)
    auth_runner.check("rotation: k2 accepted", gw, ok, {"status": 200, "backend": "A", "upstream_headers": {"X-User": "rot-k2"}})
    still = _get(gw, mint, "/rot", k1)
    auth_runner.check("rotation: k1 still accepted", gw, still, {"status": 200, "backend": "A"})
    # Two keys now: a token without kid is ambiguous.
    no_kid = _get(gw, mint, "/rot", {"alg": "RS256", "key": "rsa2", "kid": None})
    auth_runner.check("rotation: kid required", gw, no_kid, {"status": 401, "backend": "none", "reason": "jwt_kid_required"})


def test_unknown_kid_flood_fetches_at_most_once(gateways, mint, jwks, keyring):
    gw = gateways.get("rotation")
    path = "/flood/jwks.json"
    warm = _get(gw, mint, "/flood", {"alg": "RS256"})
    auth_runner.check("flood: warm-up", gw, warm, {"status": 200, "backend": "A"})
    before = jwks.count(path)
    tokens = [auth_tokens.mint({"alg": "RS256", "kid": f"flood-{i}"}, keyring) for i in range(100)]

    def one(token):
        return auth_runner.send(gw, {"path": "/flood", "headers": {"Authorization": f"Bearer {token}"}}, mint).result.status

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, tokens))
    assert set(statuses) == {401}, f"statuses of the unknown-kid flood: {sorted(set(statuses))}"
    extra = jwks.count(path) - before
    assert extra <= 1, f"100 unknown kids within jwks_min_refetch caused {extra} JWKS fetches (at most 1 allowed)"
    # The valid key keeps working during and after the flood.
    after = _get(gw, mint, "/flood", {"alg": "RS256"})
    auth_runner.check("flood: valid token after", gw, after, {"status": 200, "backend": "A"})


def test_oidc_discovery_was_used(gateways, mint, jwks):
    gw = gateways.get("rotation")
    sent = _get(gw, mint, "/oidc", {"alg": "RS256", "key": "rsa3", "kid": "oidc1", "claims": {"iss": "https://oidc.test/"}})
    auth_runner.check("oidc: accepted", gw, sent, {"status": 200, "backend": "A"})
    assert jwks.count("/oidc/.well-known/openid-configuration") >= 1
    assert jwks.count("/oidc/jwks.json") >= 1


def test_oidc_discovery_success_logs_no_failure(gateways, mint):
    gw = gateways.get("rotation")
    sent = _get(gw, mint, "/oidc", {"alg": "RS256", "key": "rsa3", "kid": "oidc1", "claims": {"iss": "https://oidc.test/"}})
    assert sent.result.status == 200
    assert "discovery failed" not in gw.log_since(0)


# --------------------------------------------------------------------------- authorizer


def _calls(authz, token):
    with authz.lock:
        return sum(1 for c in authz.calls if c.get("authorization") == f"Bearer {token}")


def test_authorizer_caches_per_identity(gateways, mint, authz):
    gw = gateways.get("authorizer")
    workers = len(gw.nginx.worker_pids()) or 1
    for token, path, status in (("allow-cache1", "/authz", 200), ("deny401-cache1", "/authz", 401), ("deny403-cache1", "/authz", 403)):
        for _ in range(10):
            sent = _get(gw, mint, path, headers={"Authorization": f"Bearer {token}"})
            assert sent.result.status == status, (token, sent.result.status, sent.result.body[:200])
        calls = _calls(authz, token)
        # ttl 60s: each worker asks at most once per identity.
        assert 1 <= calls <= workers, f"{token}: {calls} authorizer calls for 10 requests with {workers} workers"
    # Another identity is not served from that cache.
    sent = _get(gw, mint, "/authz", headers={"Authorization": "Bearer allow-cache2"})
    assert sent.result.status == 200 and _calls(authz, "allow-cache2") == 1
    echo = sent.result.echo
    assert echo["headers"].get("x-auth-user") == "cache2"


def test_authorizer_without_cache_asks_every_time(gateways, mint, authz):
    gw = gateways.get("authorizer")
    for _ in range(5):
        sent = _get(gw, mint, "/authz-nocache", headers={"Authorization": "Bearer allow-nocache"})
        assert sent.result.status == 200
    assert _calls(authz, "allow-nocache") == 5


def test_authorizer_receives_identity_and_request_context(gateways, mint, authz):
    gw = gateways.get("authorizer")
    sent = _get(gw, mint, "/authz-nocache?x=1", headers={"Authorization": "Bearer allow-context"})
    assert sent.result.status == 200
    with authz.lock:
        call = [c for c in authz.calls if c.get("authorization") == "Bearer allow-context"][-1]
    assert call["_path"] == "/check"
    assert call.get("x-forwarded-method") == "GET"
    assert call.get("x-forwarded-uri") == "/authz-nocache?x=1"
    assert call.get("x-request-id") == sent.request_id


def test_authorizer_not_called_without_identity(gateways, mint, authz):
    gw = gateways.get("authorizer")
    with authz.lock:
        before = len(authz.calls)
    for _ in range(3):
        sent = _get(gw, mint, "/authz-nocache")
        assert sent.result.status == 401
    with authz.lock:
        assert len(authz.calls) == before, "the authorizer was called for a request without identity"


def test_authorizer_timeout_and_down_are_never_cached_as_allow(gateways, mint, authz):
    gw = gateways.get("authorizer")
    for path, token, log in (("/authz-slow", "slow-twice", "failed: reading status line: timeout"),
                             ("/authz-down", "allow-down2", "failed: connect to")):
        for _ in range(2):
            sent = auth_runner.send(gw, {"path": path, "headers": {"Authorization": f"Bearer {token}"}}, mint, error_log=log)
            auth_runner.check(f"authorizer {path}", gw, sent, {"status": 503, "backend": "none", "error_log": log})


# --------------------------------------------------------------------------- API keys


def test_gwc_keys_cli(auth_work):
    d = auth_work / "cli-keys"
    d.mkdir()
    path = d / "keys.yaml"
    proc = auth_runner.gwc_cli("keys", "new", "--id", "erin", "--plan", "gold", "--file", str(path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip("\n").splitlines()
    key = lines[-1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{32,}", key), f"the last stdout line is not the key alone: {lines[-1]!r}"
    text = path.read_text()
    assert key not in text, "the plain key was stored"
    data = yaml.safe_load(text)
    entry = [c for c in data["consumers"] if c["id"] == "erin"][0]
    assert entry["key_sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert entry["plan"] == "gold" and entry.get("enabled", True) is True
    again = auth_runner.gwc_cli("keys", "new", "--id", "erin", "--file", str(path))
    assert again.returncode != 0, "a duplicate consumer id was accepted"
    revoke = auth_runner.gwc_cli("keys", "revoke", "--id", "erin", "--file", str(path))
    assert revoke.returncode == 0, revoke.stderr
    assert [c for c in yaml.safe_load(path.read_text())["consumers"] if c["id"] == "erin"][0]["enabled"] is False
    missing = auth_runner.gwc_cli("keys", "revoke", "--id", "nobody", "--file", str(path))
    assert missing.returncode != 0

    users = d / "users.yaml"
    pw = auth_runner.gwc_cli("keys", "passwd", "--user", "ann", "--file", str(users), "--password-stdin", stdin="hunter2\n")
    assert pw.returncode == 0, pw.stderr
    text = users.read_text()
    assert "hunter2" not in text and "pbkdf2-sha256$" in text


def test_keys_added_to_deployed_output_work_after_reload(gateways, mint):
    gw = gateways.get("apikeys_reload")
    deployed = gw.out_dir / "keys.json"
    assert deployed.exists(), "the build did not write keys.json into the output"
    data = json.loads(deployed.read_text())
    for key in gw.keys.values():
        assert key not in deployed.read_text(), "a plain key reached the output"
    assert hashlib.sha256(gw.keys["alice"].encode()).hexdigest() in data["consumers"]

    new = auth_runner.new_key(deployed, "erin", "gold")
    assert hashlib.sha256(new.encode()).hexdigest() in json.loads(deployed.read_text())["consumers"]
    assert new not in deployed.read_text()
    before = _get(gw, mint, "/h", headers={"X-API-Key": new})
    auth_runner.check("reload: new key before reload", gw, before, {"status": 401, "backend": "none"})

    gw.reload()
    after = _get(gw, mint, "/h", headers={"X-API-Key": new})
    auth_runner.check("reload: new key after reload", gw, after, {"status": 200, "backend": "A", "consumer": "erin"})
    old = _get(gw, mint, "/h", headers={"X-API-Key": gw.keys["alice"]})
    auth_runner.check("reload: existing key still works", gw, old, {"status": 200, "backend": "A", "consumer": "alice"})

    proc = auth_runner.gwc_cli("keys", "revoke", "--id", "alice", "--file", str(deployed))
    assert proc.returncode == 0, proc.stderr
    gw.reload()
    revoked = _get(gw, mint, "/h", headers={"X-API-Key": gw.keys["alice"]})
    auth_runner.check("reload: revoked key", gw, revoked, {"status": 403, "backend": "none", "reason": "apikey_disabled"})
    entries = gw.access_entries([after.request_id, revoked.request_id])
    assert entries.get(after.request_id, {}).get("consumer") == "erin"
    assert entries.get(after.request_id, {}).get("plan") == "gold"
    assert entries.get(revoked.request_id, {}).get("reason") == "apikey_disabled"


def test_plan_in_access_log(gateways, mint):
    gw = gateways.get("apikeys")
    sent = _get(gw, mint, "/h", headers={"X-API-Key": gw.keys["dave"]})
    assert sent.result.status == 200
    entry = gw.access_entries([sent.request_id]).get(sent.request_id)
    assert entry and entry["consumer"] == "dave" and entry["plan"] == "gold", entry


# --------------------------------------------------------------------------- mTLS and secrets


def test_mtls_fingerprint_is_the_client_certificate_sha1(gateways, mint, pki):
    gw = gateways.get("mtls")
    sent = auth_runner.send(gw, {"path": "/mtls", "tls": "client"}, mint, pki["contexts"])
    assert sent.result.status == 200
    cert = x509.load_pem_x509_certificate(pki["client_x509"])
    want = cert.fingerprint(hashes.SHA1()).hex()
    got = sent.result.echo["headers"].get("x-client-fingerprint")
    assert got is not None and got.replace(":", "").lower() == want


def test_no_secret_in_the_output(gateways):
    gw = gateways.get("jwt")
    conf = (gw.out_dir / "nginx.conf").read_text()
    assert re.search(rf"^\s*env {auth_tokens.HMAC_ENV};", conf, re.M), "nginx.conf lacks `env` for the HMAC secret"
    for f in gw.out_dir.rglob("*"):
        if f.is_file() and "logs" not in f.parts:
            text = f.read_text(errors="replace")
            assert auth_tokens.HMAC_SECRET not in text, f"the HMAC secret is in {f}"
            assert "PRIVATE KEY" not in text, f"private key material in {f}"
    access = json.loads((gw.out_dir / "lua" / "gwc" / "data" / "access.json").read_text())
    for name, scheme in access["schemes"].items():
        for key in (scheme.get("jwks") or {}).get("keys", []):
            assert not ({"d", "p", "q", "dp", "dq", "qi", "k"} & set(key)), f"{name}: private JWK members in the output"


def test_verified_token_cache_is_bounded_by_exp(gateways, mint, keyring):
    """A token accepted (and cached) while valid is refused once its exp passes (leeway 0)."""
    gw = gateways.get("jwt")
    token = auth_tokens.mint({"alg": "RS256", "exp_in": 2, "claims": {"email": "a@example.com", "sub": "short-lived"}}, keyring)
    exp = auth_tokens.default_claims()["iat"] + 2
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(3):  # both workers likely cache it
        sent = auth_runner.send(gw, {"path": "/scoped/read", "headers": headers}, mint)
        if time.time() < exp - 0.5:
            assert sent.result.status == 200, sent.result.body[:200]
    _until(lambda: time.time() > exp + 1.1, deadline_s=10, interval_s=0.1)
    for _ in range(4):
        sent = auth_runner.send(gw, {"path": "/scoped/read", "headers": headers}, mint)
        auth_runner.check("expired after caching", gw, sent, {"status": 401, "backend": "none", "reason": "jwt_expired"})
