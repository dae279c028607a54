"""Security in the model and plan: what OpenAPI declares decides what is enforced.

Bad cases are data: spec (+ side files) in, diagnostic code, pointer and
message fragment out, through the real command line. Good cases check the
access policy the build hands to the runtime.
"""
import json
import re
import subprocess
import sys

import pytest

HEAD = """\
openapi: 3.1.0
info: {title: t, version: "1"}
x-gateway:
  upstreams: {b: {servers: ["http://127.0.0.1:9000"]}}
  upstream: b
"""
RSA_JWK = {"kty": "RSA", "kid": "k1", "n": "sXch", "e": "AQAB"}
BEARER = """\
    user:
      type: http
      scheme: bearer
      x-gateway: {issuer: "https://id.test/", jwks_uri: "http://127.0.0.1:1/jwks"}
"""
TWO_OPS = """\
paths:
  /pets:
    get: {operationId: listPets, responses: {"200": {description: ok}}}
    post: {operationId: addPet, security: [], responses: {"200": {description: ok}}}
"""


def spec(schemes: str = BEARER, root: str = "", paths: str = TWO_OPS, gateway: str = "") -> str:
    return HEAD + gateway + root + "components:\n  securitySchemes:\n" + schemes + paths


BAD = [
    {
        "name": "fail-closed-operation-without-requirement",
        "spec": spec(),
        "code": "GW040",
        "pointer": "/paths/~1pets/get",
        "message": "GET /pets has no security requirement",
    },
    {
        "name": "unknown-scheme-in-requirement",
        "spec": spec(root="security: [{nobody: []}]\n"),
        "code": "GW041",
        "pointer": "/security/0/nobody",
        "message": "unknown scheme 'nobody'",
    },
    {
        "name": "hmac-without-secret-env",
        "spec": spec(
            schemes="    user: {type: http, scheme: bearer, x-gateway: {algorithms: [HS256], jwks_uri: 'http://127.0.0.1:1/'}}\n",
            root="security: [{user: []}]\n",
        ),
        "code": "GW043",
        "message": "HS256 need `secret_env`",
    },
    {
        "name": "jwt-without-keys",
        "spec": spec(schemes="    user: {type: http, scheme: bearer, x-gateway: {issuer: x}}\n", root="security: [{user: []}]\n"),
        "code": "GW043",
        "message": "JWT needs keys",
    },
    {
        "name": "two-key-sources",
        "spec": spec(
            schemes="    user: {type: http, scheme: bearer, x-gateway: {jwks_uri: 'http://127.0.0.1:1/', jwks_file: j.json}}\n",
            root="security: [{user: []}]\n",
        ),
        "code": "GW043",
        "message": "not jwks_uri, jwks_file",
    },
    {
        "name": "inline-symmetric-key-would-leak",
        "spec": spec(
            schemes="    user: {type: http, scheme: bearer, x-gateway: {jwks: {keys: [{kty: oct, k: c2VjcmV0}]}}}\n",
            root="security: [{user: []}]\n",
        ),
        "code": "GW044",
        "pointer": "/components/securitySchemes/user/x-gateway/jwks/keys/0",
    },
    {
        "name": "private-rsa-key-in-jwks-file-would-leak",
        "spec": spec(
            schemes="    user: {type: http, scheme: bearer, x-gateway: {jwks_file: jwks.json}}\n",
            root="security: [{user: []}]\n",
        ),
        "files": {"jwks.json": json.dumps({"keys": [dict(RSA_JWK, d="private")]})},
        "code": "GW044",
        "file": "jwks.json",
    },
    {
        "name": "jwks-file-missing",
        "spec": spec(
            schemes="    user: {type: http, scheme: bearer, x-gateway: {jwks_file: nowhere.json}}\n",
            root="security: [{user: []}]\n",
        ),
        "code": "GW045",
        "pointer": "/components/securitySchemes/user/x-gateway/jwks_file",
    },
    {
        "name": "digest-auth-unsupported",
        "spec": spec(schemes="    d: {type: http, scheme: digest}\n", root="security: [{d: []}]\n"),
        "code": "GW042",
        "pointer": "/components/securitySchemes/d/scheme",
    },
    {
        "name": "api-key-without-key-file",
        "spec": spec(schemes="    key: {type: apiKey, in: header, name: X-API-Key}\n", root="security: [{key: []}]\n"),
        "code": "GW049",
    },
    {
        "name": "key-file-with-plain-key",
        "spec": spec(schemes="    key: {type: apiKey, in: header, name: X-API-Key}\n", root="security: [{key: []}]\n", gateway="  keys: keys.yaml\n"),
        "files": {"keys.yaml": "consumers:\n  - id: alice\n    key: s3cr3t-plain-key\n"},
        "code": "GW046",
        "file": "keys.yaml",
        "pointer": "/consumers/0/key_sha256",
        "line": 2,
    },
    {
        "name": "key-file-duplicate-id",
        "spec": spec(schemes="    key: {type: apiKey, in: header, name: X-API-Key}\n", root="security: [{key: []}]\n", gateway="  keys: keys.yaml\n"),
        "files": {"keys.yaml": "consumers:\n  - {id: a, key_sha256: " + "a" * 64 + "}\n  - {id: a, key_sha256: " + "b" * 64 + "}\n"},
        "code": "GW046",
        "file": "keys.yaml",
        "line": 3,
    },
    {
        "name": "mutual-tls-without-client-ca",
        "spec": spec(schemes="    cert: {type: mutualTLS}\n", root="security: [{cert: []}]\n"),
        "code": "GW048",
    },
    {
        "name": "bad-cidr",
        "spec": spec(root="security: []\n", gateway="  ip: {deny: [10.0.0.0/33]}\n"),
        "code": "GW047",
        "pointer": "/x-gateway/ip/deny/0",
    },
    {
        "name": "jwks-host-name-without-resolver",
        "spec": spec(
            schemes="    user: {type: http, scheme: bearer, x-gateway: {jwks_uri: 'https://id.example.com/jwks'}}\n",
            root="security: [{user: []}]\n",
        ),
        "code": "GW043",
        "pointer": "/components/securitySchemes/user/x-gateway/jwks_uri",
        "message": "x-gateway.nginx.resolver",
    },
    {
        "name": "unknown-scheme-setting-has-a-hint",
        "spec": spec(
            schemes="    user: {type: http, scheme: bearer, x-gateway: {jwks_uri: 'http://127.0.0.1:1/', audience: [a]}}\n",
            root="security: [{user: []}]\n",
        ),
        "code": "GW020",
        "message": "did you mean 'audiences'",
    },
]

_DIAG = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): error\[(?P<code>GW\d{3})\]: (?P<msg>.*?)(?: \(at (?P<ptr>[^)]*)\))?$", re.M)


def _gwc(*args, cwd, stdin=None):
    return subprocess.run([sys.executable, "-m", "gwc.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=60, input=stdin)


@pytest.mark.parametrize("case", BAD, ids=[c["name"] for c in BAD])
def test_bad_security_is_a_diagnostic(case, tmp_path):
    (tmp_path / "api.yaml").write_text(case["spec"])
    for name, text in case.get("files", {}).items():
        (tmp_path / name).write_text(text)
    proc = _gwc("build", "api.yaml", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    diags = [m.groupdict() for m in _DIAG.finditer(proc.stderr)]
    matching = [d for d in diags if d["code"] == case["code"]]
    assert matching, f"expected {case['code']}, got {proc.stderr!r}"
    d = matching[0]
    assert d["file"] == case.get("file", "api.yaml"), proc.stderr
    if "pointer" in case:
        assert d["ptr"] == case["pointer"], proc.stderr
    if "line" in case:
        assert int(d["line"]) == case["line"], proc.stderr
    if "message" in case:
        assert case["message"] in d["msg"], proc.stderr


def _build(tmp_path, text, files=None):
    (tmp_path / "api.yaml").write_text(text)
    for name, body in (files or {}).items():
        (tmp_path / name).write_text(body)
    proc = _gwc("build", "api.yaml", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads((tmp_path / "out/lua/gwc/data/access.json").read_text())


def test_requirements_are_or_of_and_and_operation_level_replaces_root(tmp_path):
    schemes = BEARER + "    key: {type: apiKey, in: query, name: api_key}\n"
    paths = """\
paths:
  /pets:
    get: {operationId: listPets, responses: {"200": {description: ok}}}
    put: {operationId: putPets, security: [{user: [w, r], key: []}], responses: {"200": {description: ok}}}
    post: {operationId: addPet, security: [], responses: {"200": {description: ok}}}
"""
    keys = "consumers: []\n"
    data = _build(tmp_path, spec(schemes, "security: [{user: [pets:read]}, {key: []}]\n", paths, "  keys: keys.yaml\n"), {"keys.yaml": keys})
    ops = data["operations"]
    assert ops["listPets"]["requirements"] == [[["user", ["pets:read"]]], [["key", []]]]
    assert ops["putPets"]["requirements"] == [[["key", []], ["user", ["w", "r"]]]]
    assert "addPet" not in ops  # explicitly public: no access phase at all
    assert data["schemes"]["key"]["source"] == {"in": "query", "name": "api_key", "bearer": False}


def test_empty_requirement_object_makes_an_operation_public(tmp_path):
    data = _build(tmp_path, spec(root="security: [{}]\n"))
    assert data["operations"] == {}


def test_no_secret_reaches_the_output(tmp_path):
    """HMAC secrets come from the environment; keys only as hashes; basic passwords as PBKDF2."""
    schemes = """\
    user: {type: http, scheme: bearer, x-gateway: {algorithms: [HS256], secret_env: GWC_TEST_SECRET}}
    key: {type: apiKey, in: header, name: X-API-Key}
    basic: {type: http, scheme: basic, x-gateway: {credentials: users.yaml}}
"""
    (tmp_path / "api.yaml").write_text(spec(schemes, "security: [{user: []}, {key: []}, {basic: []}]\n", gateway="  keys: keys.yaml\n"))
    new = _gwc("keys", "new", "--id", "alice", "--plan", "gold", "--file", "keys.yaml", cwd=tmp_path)
    assert new.returncode == 0, new.stderr
    key = new.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"gwc_[A-Za-z0-9_-]{43}", key)
    pw = _gwc("keys", "passwd", "--user", "bob", "--file", "users.yaml", "--password-stdin", cwd=tmp_path, stdin="correct horse\n")
    assert pw.returncode == 0, pw.stderr
    proc = _gwc("build", "api.yaml", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    everything = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert key.encode() not in everything
    assert b"correct horse" not in everything
    assert b"GWC_TEST_SECRET" in (tmp_path / "out/nginx.conf").read_bytes()  # `env NAME;`, not the value
    keys_json = json.loads((tmp_path / "out/keys.json").read_text())
    import hashlib

    digest = hashlib.sha256(key.encode()).hexdigest()
    assert keys_json["consumers"][digest] == {"id": "alice", "plan": "gold", "enabled": True, "expires": None}
    # keys.json is meant to be edited in place, so the manifest does not pin it.
    assert "keys.json" not in json.loads((tmp_path / "out/manifest.json").read_text())["files"]


def test_keys_cli_revoke_and_duplicate(tmp_path):
    assert _gwc("keys", "new", "--id", "a", "--file", "k.yaml", cwd=tmp_path).returncode == 0
    dup = _gwc("keys", "new", "--id", "a", "--file", "k.yaml", cwd=tmp_path)
    assert dup.returncode == 1 and "already exists" in dup.stderr and dup.stdout == ""
    assert _gwc("keys", "revoke", "--id", "a", "--file", "k.yaml", cwd=tmp_path).returncode == 0
    assert "enabled: false" in (tmp_path / "k.yaml").read_text()
    missing = _gwc("keys", "revoke", "--id", "zz", "--file", "k.yaml", cwd=tmp_path)
    assert missing.returncode == 1 and "no consumer 'zz'" in missing.stderr
    bad = _gwc("keys", "new", "--id", "b", "--expires", "tomorrow", "--file", "k.yaml", cwd=tmp_path)
    assert bad.returncode == 1 and "RFC 3339" in bad.stderr


def test_forwarded_headers_are_stripped_where_no_lua_runs(tmp_path):
    """Public operations never run Lua, so nginx itself blanks the claim headers."""
    import crossplane

    schemes = """\
    user:
      type: http
      scheme: bearer
      x-gateway: {jwks_uri: "http://127.0.0.1:1/jwks", forward_claims: {sub: X-User, scope: X-Scopes}}
"""
    _build(tmp_path, spec(schemes, "security: [{user: []}]\n"))
    parsed = crossplane.parse(str(tmp_path / "out/nginx.conf"), comments=False, strict=False)
    locations = {}

    def walk(block):
        for d in block:
            if d["directive"] == "location":
                locations[" ".join(d["args"])] = d.get("block", [])
            walk(d.get("block", []))

    for conf in parsed["config"]:
        walk(conf["parsed"])
    public = [b for name, b in locations.items() if name.startswith("= gw:") and not any(d["directive"] == "access_by_lua_block" for d in b) and any(d["directive"] == "proxy_pass" for d in b)]
    guarded = [b for name, b in locations.items() if any(d["directive"] == "access_by_lua_block" for d in b)]
    assert public and guarded
    for block in public:
        blanked = {d["args"][0] for d in block if d["directive"] == "proxy_set_header" and d["args"][1] == ""}
        assert {"X-User", "X-Scopes"} <= blanked


def test_ip_policy_is_a_geo_map_where_deny_wins(tmp_path):
    """geo picks the longest prefix; the policy says deny wins. An allowed block
    inside a denied one is dropped, so the two agree."""
    import crossplane
    import ipaddress

    gateway = "  ip: {allow: [10.1.0.0/16, 192.168.0.0/24, '2001:db8::/32'], deny: [10.0.0.0/8, 192.168.0.7]}\n"
    _build(tmp_path, spec(root="security: []\n", gateway=gateway))
    parsed = crossplane.parse(str(tmp_path / "out/nginx.conf"), comments=False, strict=False)
    geos = []

    def walk(block):
        for d in block:
            if d["directive"] == "geo":
                geos.append((d["args"], {e["directive"]: e["args"] for e in d["block"]}))
            walk(d.get("block", []))

    for conf in parsed["config"]:
        walk(conf["parsed"])
    assert len(geos) == 1
    (variable,), entries = geos[0]
    assert entries == {
        "default": ["0"],
        "10.0.0.0/8": ["0"],
        "192.168.0.0/24": ["1"],
        "192.168.0.7/32": ["0"],
        "2001:db8::/32": ["1"],
    }

    def verdict(address):
        ip = ipaddress.ip_address(address)
        best = max((ipaddress.ip_network(c) for c in entries if c != "default" and ip in ipaddress.ip_network(c)),
                   key=lambda n: n.prefixlen, default=None)
        return entries[str(best)][0] if best else entries["default"][0]

    assert [verdict(a) for a in ("10.1.2.3", "10.9.9.9", "192.168.0.5", "192.168.0.7", "2001:db8::1", "8.8.8.8")] == \
        ["0", "0", "1", "0", "1", "0"]


def test_a_root_level_mistake_is_reported_once_at_its_place(tmp_path):
    """An IP rule at the root applies to every operation, but its error is one diagnostic, at the root."""
    (tmp_path / "api.yaml").write_text(spec(root="security: []\n", gateway="  ip: {deny: [10.0.0.0/33]}\n") + """\
  /more:
    get: {operationId: more, responses: {"200": {description: ok}}}
    parameters: []
    x-gateway: {ip: {allow: [not-an-address]}}
""")
    proc = _gwc("build", "api.yaml", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 1
    diags = [m.groupdict() for m in _DIAG.finditer(proc.stderr) if m.group("code") == "GW047"]
    assert sorted(d["ptr"] for d in diags) == ["/paths/~1more/x-gateway/ip/allow/0", "/x-gateway/ip/deny/0"], proc.stderr
