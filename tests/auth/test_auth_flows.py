"""Stateful auth scenarios that a single request cannot express: JWKS
rotation and the refetch budget (counted at the JWKS server), authorizer
caching (counted at the authorizer), API keys added to a deployed output and
picked up by `nginx -s reload`, the `gwc keys` command line, the exact mTLS
fingerprint, and secrets never reaching the output directory.

Every wait has a deadline; nothing asserts on timing.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import re
import time
from types import SimpleNamespace

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

import auth_runner
import auth_servers
import auth_tokens
import harness
from support.processes import Nginx, free_port

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


def test_unknown_kid_flood_fetches_at_most_the_burst(gateways, mint, jwks, keyring):
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
    # jwks_min_refetch 120s: nothing refills during the flood, so only the default burst of 3 is spent.
    assert extra <= 3, f"100 unknown kids within jwks_min_refetch caused {extra} JWKS fetches (at most the burst, 3)"
    # The valid key keeps working during and after the flood.
    after = _get(gw, mint, "/flood", {"alg": "RS256"})
    auth_runner.check("flood: valid token after", gw, after, {"status": 200, "backend": "A"})


# Paths of refetch.yaml's key sets; /down/ is on a server of its own that a test stops.
REFETCH_SETS = ("after1", "after2", "budget")


@pytest.fixture(scope="module")
def refetch(gateways, keyring, auth_work):
    """A gateway of its own (refetch.yaml), so its refetch budgets start full, with two JWKS servers, one of
    which `stop_down()` takes off the network."""
    with contextlib.ExitStack() as stack:
        issuer = stack.enter_context(auth_servers.jwks_server())
        down_stack = stack.enter_context(contextlib.ExitStack())
        doomed = down_stack.enter_context(auth_servers.jwks_server())
        for name in REFETCH_SETS:
            issuer.set(name, keyring.jwks(["rsa"]))
        doomed.set("down", keyring.jwks(["rsa"]))
        d = auth_work / "specs" / "refetch"
        d.mkdir(parents=True)
        port = free_port()
        placeholders = {"__BACKEND__": str(gateways.ctx["backend"]), "__JWKS__": str(issuer.port), "__JWKS_DOWN__": str(doomed.port)}
        text = (auth_runner.SPECS_DIR / "refetch.yaml").read_text(encoding="utf-8")
        for k, v in placeholders.items():
            text = text.replace(k, v)
        spec_file = d / "api.yaml"
        spec_file.write_text(text, encoding="utf-8")
        out_dir = auth_work / "out" / "refetch"
        harness.gwc_build(spec_file, out_dir, f"127.0.0.1:{port}", gateways.target)
        nginx = stack.enter_context(Nginx(out_dir).start([port]))
        gw = auth_runner.Gateway("refetch", port, out_dir, spec_file, nginx, placeholders)
        # The fetch at start is not budgeted, but a request that came before it would spend budget.
        started = _until(lambda: all(issuer.count(f"/{n}/jwks.json") for n in REFETCH_SETS) and doomed.count("/down/jwks.json"),
                         deadline_s=10, interval_s=0.05)
        assert started, "the gateway did not fetch its key sets at start"
        yield SimpleNamespace(gw=gw, issuer=issuer, stop_down=down_stack.close)
        nginx.stop()
        problems = harness.unexpected_log_lines(gw.log_since(0), gw.allowed_errors)
        assert not problems, "unexpected lines in the error log:\n" + "\n".join(problems)


@pytest.mark.parametrize("garbage", [1, 2])
def test_rotation_right_after_garbage_tokens_is_accepted_at_once(refetch, mint, keyring, garbage):
    gw, issuer = refetch.gw, refetch.issuer
    name = f"after{garbage}"
    path = f"/{name}/jwks.json"
    known = _get(gw, mint, f"/{name}", {"alg": "RS256"})
    auth_runner.check(f"{name}: k1 accepted", gw, known, {"status": 200, "backend": "A"})
    before = issuer.count(path)
    for i in range(garbage):
        junk = _get(gw, mint, f"/{name}", {"alg": "RS256", "kid": f"junk-{i}"})
        auth_runner.check(f"{name}: garbage kid", gw, junk, {"status": 401, "backend": "none", "reason": "jwt_unknown_kid"})
    issuer.set(name, keyring.jwks(["rsa", "rsa2"]))  # the issuer rotates: k2 is published
    # jwks_min_refetch is 120s: before the budget, any refetch here was blocked for two minutes.
    rotated = _get(gw, mint, f"/{name}", {"alg": "RS256", "key": "rsa2", "kid": "k2", "claims": {"sub": "rotated"}})
    auth_runner.check(f"{name}: k2 accepted on its first request", gw, rotated, {"status": 200, "backend": "A"})
    # One refetch per garbage token and one that found k2.
    assert issuer.count(path) - before == garbage + 1


def test_unknown_kid_flood_over_several_intervals_stays_within_the_budget(refetch, mint, keyring):
    gw, issuer = refetch.gw, refetch.issuer
    burst, interval = 2, 1.0  # refetch.yaml, scheme budget
    path = "/budget/jwks.json"
    known = _get(gw, mint, "/budget", {"alg": "RS256"})
    auth_runner.check("budget: k1 accepted", gw, known, {"status": 200, "backend": "A"})
    kids = itertools.count()
    before = issuer.count(path)
    start = time.monotonic()

    def flood():
        statuses = []
        while time.monotonic() - start < 3.5 * interval:
            token = auth_tokens.mint({"alg": "RS256", "kid": f"flood-{next(kids)}"}, keyring)
            statuses.append(auth_runner.send(gw, {"path": "/budget", "headers": {"Authorization": f"Bearer {token}"}}, mint).result.status)
        return statuses

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        statuses = [s for part in pool.map(lambda _: flood(), range(4)) for s in part]
    elapsed = time.monotonic() - start
    fetches = issuer.count(path) - before
    assert statuses and set(statuses) == {401}, f"statuses of the unknown-kid flood: {sorted(set(statuses))}"
    # docs/auth.md: in T seconds at most burst + floor(T / interval) refetches (nginx's clock counts in ms).
    bound = burst + int((elapsed + 0.001) / interval)
    assert burst <= fetches <= bound, f"{len(statuses)} unknown kids in {elapsed:.1f}s caused {fetches} fetches (budget {bound})"

    time.sleep(burst * interval + 0.2)  # the budget refills
    issuer.set("budget", keyring.jwks(["rsa", "rsa2"]))
    before = issuer.count(path)
    rotated = _get(gw, mint, "/budget", {"alg": "RS256", "key": "rsa2", "kid": "k2"})
    auth_runner.check("budget: k2 accepted after the flood", gw, rotated, {"status": 200, "backend": "A"})
    assert issuer.count(path) - before == 1


def test_jwks_server_down_during_a_refetch(refetch, mint):
    gw = refetch.gw
    first = _get(gw, mint, "/down", {"alg": "RS256"})
    auth_runner.check("down: k1 accepted", gw, first, {"status": 200, "backend": "A"})
    refetch.stop_down()
    offset = gw.log_size()
    for i in range(5):
        unknown = _get(gw, mint, "/down", {"alg": "RS256", "kid": f"new-{i}"})
        auth_runner.check("down: unknown kid", gw, unknown, {"status": 401, "backend": "none", "reason": "jwt_unknown_kid"})
        known = _get(gw, mint, "/down", {"alg": "RS256"})
        auth_runner.check("down: known kid still accepted", gw, known, {"status": 200, "backend": "A"})
    # The unknown kids did try the server that is gone (and were refused because it was gone).
    assert "fetch failed: connect to" in gw.log_since(offset)


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
