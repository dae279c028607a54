"""Bad specs: a positioned diagnostic, exit code 1, no traceback, nothing written.

Each case is data: the spec text, the diagnostic code and pointer expected.
"""
import json
import re
import subprocess
import sys
import textwrap

import pytest

HEADER = """\
openapi: 3.0.3
info: {title: t, version: "1"}
"""
UPSTREAM = """\
x-gateway:
  upstreams:
    pets: {servers: ["http://127.0.0.1:9000"]}
  upstream: pets
"""
PET_PATH = """\
paths:
  /pets/{id}:
    parameters: [{name: id, in: path, required: true, schema: {type: string}}]
    get:
      operationId: getPet
      responses: {"200": {description: ok}}
"""

CASES = [
    {
        "name": "malformed-yaml",
        "spec": "openapi: 3.0.3\ninfo: {title: t\npaths: {}\n",
        "code": "GW001",
        "line": 3,
    },
    {
        "name": "malformed-json",
        "file": "api.json",
        "spec": '{"openapi": "3.0.3", "info": {"title": "t",, "version": "1"}, "paths": {}}',
        "code": "GW001",
        "line": 1,
    },
    {"name": "not-openapi-list", "spec": "- a\n- b\n", "code": "GW002"},
    {"name": "swagger-2", "spec": "swagger: '2.0'\ninfo: {title: t, version: '1'}\npaths: {}\n", "code": "GW002"},
    {"name": "openapi-2-version", "spec": "openapi: 2.0.0\ninfo: {title: t, version: '1'}\npaths: {}\n", "code": "GW002", "pointer": "/openapi"},
    {
        "name": "duplicate-yaml-key",
        "spec": HEADER + UPSTREAM + "paths:\n  /a:\n    get: {responses: {'200': {description: ok}}}\n  /a:\n    get: {responses: {'200': {description: ok}}}\n",
        "code": "GW004",
        "pointer": "/paths/~1a",
    },
    {
        "name": "openapi-structure",
        "spec": HEADER + UPSTREAM + "paths:\n  /a:\n    get: {responses: {'200': {descriptio: ok}}}\n",
        "code": "GW010",
    },
    {
        "name": "openapi-structure-json",
        "file": "api.json",
        "spec": '{\n "openapi": "3.0.3",\n "info": {"title": "t", "version": "1"},\n "x-gateway": {"upstreams": {"p": {"servers": ["http://127.0.0.1:9000"]}}, "upstream": "p"},\n "paths": {"/a": {"get": {"responses": {"200": {"description": "ok", "conten": {}}}}}}\n}\n',
        "code": "GW010",
        "pointer": "/paths/~1a/get/responses/200/conten",
        "line": 5,
    },
    {
        "name": "undeclared-path-parameter",
        "spec": HEADER + UPSTREAM + "paths:\n  /a/{id}:\n    get: {responses: {'200': {description: ok}}}\n",
        "code": "GW010",
        "pointer": "/paths/~1a~1{id}/get",
        "message": "Path parameter 'id' for 'get' operation in '/a/{id}' was not resolved",
        "line": 9,
    },
    {
        "name": "duplicate-parameter",
        "spec": HEADER + UPSTREAM + "paths:\n  /a:\n    get:\n      parameters: [{name: q, in: query, schema: {type: string}}, {name: q, in: query, schema: {type: integer}}]\n      responses: {'200': {description: ok}}\n",
        "code": "GW010",
        "pointer": "/paths/~1a/get/parameters/1",
        "message": "Duplicate parameter 'q'",
    },
    {
        "name": "unknown-gateway-key",
        "spec": HEADER + "x-gateway:\n  upstreamz: {}\n" + "paths: {}\n",
        "code": "GW020",
        "pointer": "/x-gateway/upstreamz",
        "message": "did you mean 'upstreams'",
        "line": 4,
    },
    {
        "name": "unknown-upstream-key",
        "spec": HEADER + "x-gateway:\n  upstreams:\n    pets: {servers: ['http://a:1'], keepalivee: 3}\npaths: {}\n",
        "code": "GW020",
        "pointer": "/x-gateway/upstreams/pets/keepalivee",
        "message": "did you mean 'keepalive'",
    },
    {
        "name": "mistyped-gateway-value",
        "spec": HEADER + "x-gateway:\n  upstreams:\n    pets: {servers: ['http://a:1'], keepalive: lots}\npaths: {}\n",
        "code": "GW021",
        "pointer": "/x-gateway/upstreams/pets/keepalive",
    },
    {
        "name": "unknown-operation-key",
        "spec": HEADER + UPSTREAM + "paths:\n  /a:\n    get:\n      x-gateway: {listen: ['1.2.3.4:80']}\n      responses: {'200': {description: ok}}\n",
        "code": "GW020",
        "pointer": "/paths/~1a/get/x-gateway/listen",
    },
    {
        "name": "unresolvable-local-ref",
        "spec": HEADER + UPSTREAM + "paths:\n  /a:\n    get:\n      responses: {'200': {$ref: '#/components/responses/Nope'}}\n",
        "code": "GW011",
        "pointer": "/paths/~1a/get/responses/200/$ref",
    },
    {
        "name": "unresolvable-file-ref",
        "spec": HEADER + UPSTREAM + "paths:\n  /a:\n    $ref: 'missing.yaml#/a'\n",
        "code": "GW011",
        "pointer": "/paths/~1a/$ref",
    },
    {
        "name": "duplicate-operation-id",
        "spec": HEADER + UPSTREAM + "paths:\n  /a:\n    get: {operationId: same, responses: {'200': {description: ok}}}\n  /b:\n    get: {operationId: same, responses: {'200': {description: ok}}}\n",
        "code": "GW030",
    },
    {
        "name": "ambiguous-routes",
        "spec": HEADER + UPSTREAM + textwrap.dedent("""\
            paths:
              /files/{name}.json:
                parameters: [{name: name, in: path, required: true, schema: {type: string}}]
                get: {responses: {'200': {description: ok}}}
              /files/data.{ext}:
                parameters: [{name: ext, in: path, required: true, schema: {type: string}}]
                get: {responses: {'200': {description: ok}}}
            """),
        "code": "GW031",
        "message": ["'/files/{name}.json'", "'/files/data.{ext}'"],
    },
    {
        "name": "unknown-upstream",
        "spec": HEADER + "x-gateway:\n  upstreams: {pets: {servers: ['http://a:1']}}\n" + "paths:\n  /a:\n    get:\n      x-gateway: {upstream: dogs}\n      responses: {'200': {description: ok}}\n",
        "code": "GW032",
        "pointer": "/paths/~1a/get/x-gateway/upstream",
        "message": "unknown upstream 'dogs'",
    },
    {
        "name": "no-integration",
        "spec": HEADER + "paths:\n  /a:\n    get: {responses: {'200': {description: ok}}}\n",
        "code": "GW036",
    },
    {
        "name": "bad-url-scheme",
        "spec": HEADER + "x-gateway:\n  upstreams: {pets: {servers: ['ftp://a:1']}}\n  upstream: pets\npaths: {}\n",
        "code": "GW033",
        "pointer": "/x-gateway/upstreams/pets/servers/0",
    },
    {
        "name": "bad-url-path",
        "spec": HEADER + "x-gateway:\n  upstreams: {pets: {servers: ['http://a:1/api']}}\n  upstream: pets\npaths: {}\n",
        "code": "GW033",
    },
    {
        "name": "bad-url-port",
        "spec": HEADER + "x-gateway:\n  upstreams: {pets: {servers: ['http://a:99999']}}\n  upstream: pets\npaths: {}\n",
        "code": "GW033",
    },
    {
        "name": "injection-in-upstream-host",
        "spec": HEADER + "x-gateway:\n  upstreams: {pets: {servers: [\"http://a;include /etc/passwd;:80\"]}}\n  upstream: pets\npaths: {}\n",
        "code": "GW033",
    },
    {
        "name": "injection-newline-in-upstream",
        "spec": HEADER + "x-gateway:\n  upstreams: {pets: {servers: [\"http://a:80\\n}\\nserver {\"]}}\n  upstream: pets\npaths: {}\n",
        "code": "GW033",
    },
    {
        "name": "injection-in-listen",
        "spec": HEADER + "x-gateway:\n  listen: ['127.0.0.1:80; include /etc/passwd']\n" + "paths: {}\n",
        "code": "GW039",
        "pointer": "/x-gateway/listen/0",
    },
    {
        "name": "injection-in-host-header",
        "spec": HEADER + "x-gateway:\n  upstreams: {pets: {servers: ['http://a:1'], host_header: 'a\"; proxy_pass http://evil; #'}}\n  upstream: pets\npaths: {}\n",
        "code": "GW021",
    },
    {
        "name": "injection-in-mock-header",
        "spec": HEADER + "paths:\n  /a:\n    get:\n      x-gateway: {mock: {headers: {X-A: \"v\\r\\nSet-Cookie: s=1\"}}}\n      responses: {'200': {description: ok}}\n",
        "code": "GW021",
    },
    {
        "name": "injection-in-mock-header-name",
        "spec": HEADER + "paths:\n  /a:\n    get:\n      x-gateway: {mock: {headers: {'X-A; evil': v}}}\n      responses: {'200': {description: ok}}\n",
        "code": "GW021",
    },
    {
        "name": "injection-in-hash-key",
        "spec": HEADER + "x-gateway:\n  upstreams: {pets: {servers: ['http://a:1'], balance: hash, hash_key: 'header.X;rm'}}\n  upstream: pets\npaths: {}\n",
        "code": "GW021",
    },
    {
        "name": "injection-in-body-size",
        "spec": HEADER + "x-gateway:\n  nginx: {client_max_body_size: '1m; include x'}\npaths: {}\n",
        "code": "GW021",
    },
    {
        "name": "mock-example-missing",
        "spec": HEADER + "paths:\n  /a:\n    get:\n      x-gateway: {mock: {example: nope}}\n      responses: {'200': {description: ok}}\n",
        "code": "GW035",
        "pointer": "/paths/~1a/get/x-gateway/mock/example",
    },
    {
        "name": "rewrite-unknown-param",
        "spec": HEADER + UPSTREAM.replace("  upstream: pets\n", "  upstream: pets\n") + PET_PATH.replace("      operationId: getPet\n", "      operationId: getPet\n      x-gateway: {path: '/v2/{petId}'}\n"),
        "code": "GW034",
    },
    {
        "name": "adjacent-params",
        "spec": HEADER + UPSTREAM + "paths:\n  /a/{x}{y}:\n    parameters: [{name: x, in: path, required: true, schema: {type: string}}, {name: y, in: path, required: true, schema: {type: string}}]\n    get: {responses: {'200': {description: ok}}}\n",
        "code": "GW034",
    },
    {
        "name": "greedy-not-last",
        "spec": HEADER + UPSTREAM + "paths:\n  /a/{p+}/b:\n    get: {responses: {'200': {description: ok}}}\n",
        "code": "GW034",
    },
    {
        "name": "same-shape-shared-method",
        "spec": HEADER + UPSTREAM + PET_PATH + "  /pets/{name}:\n    parameters: [{name: name, in: path, required: true, schema: {type: string}}]\n    get: {operationId: byName, responses: {'200': {description: ok}}}\n",
        "code": "GW031",
    },
    {
        "name": "fragment-without-selector",
        "spec": HEADER + UPSTREAM + "paths:\n  /f:\n    put: {responses: {'200': {description: ok}}}\n  /f#share:\n    put: {responses: {'200': {description: ok}}}\n",
        "code": "GW082",
    },
]

_DIAG = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): error\[(?P<code>GW\d{3})\]: (?P<msg>.*?)(?: \(at (?P<ptr>[^)]*)\))?$", re.M)


def _gwc(*args, cwd):
    return subprocess.run([sys.executable, "-m", "gwc.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_spec_is_a_diagnostic(case, tmp_path):
    name = case.get("file", "api.yaml")
    (tmp_path / name).write_text(case["spec"])
    out = tmp_path / "out"
    proc = _gwc("build", name, "-o", "out", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists(), "a failed build must not write its output directory"
    diags = [m.groupdict() for m in _DIAG.finditer(proc.stderr)]
    assert diags, f"no positioned diagnostic in: {proc.stderr!r}"
    matching = [d for d in diags if d["code"] == case["code"]]
    assert matching, f"expected {case['code']}, got {proc.stderr!r}"
    d = matching[0]
    assert d["file"] == name
    if "line" in case:
        assert int(d["line"]) == case["line"], proc.stderr
    if "pointer" in case:
        assert d["ptr"] == case["pointer"], proc.stderr
    expected = case.get("message", [])
    for fragment in [expected] if isinstance(expected, str) else expected:
        assert fragment in d["msg"], proc.stderr


@pytest.mark.parametrize("fmt", ["text", "json", "github"])
def test_validate_reports_every_problem_in_one_run(fmt, tmp_path):
    spec = HEADER + textwrap.dedent("""\
        x-gateway:
          upstreamz: {}
          listen: ['nope']
          upstreams:
            pets: {servers: ['ftp://x'], keepalive: -1}
        paths: {}
        """)
    (tmp_path / "api.yaml").write_text(spec)
    proc = _gwc("validate", "api.yaml", "--format", fmt, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    text = proc.stdout if fmt != "text" else proc.stderr
    if fmt == "json":
        codes = sorted(d["code"] for d in json.loads(text))
        assert codes == ["GW020", "GW021"], codes
        assert all(d["line"] > 0 and d["file"] == "api.yaml" for d in json.loads(text))
    elif fmt == "github":
        lines = [l for l in text.splitlines() if l.startswith("::error ")]
        assert len(lines) == 2, text
        assert all("file=api.yaml,line=" in l for l in lines)
    else:
        assert len(_DIAG.findall(text)) == 2, text


def test_semantic_problems_are_all_reported(tmp_path):
    spec = HEADER + textwrap.dedent("""\
        x-gateway:
          listen: ['nope']
          upstreams:
            pets: {servers: ['ftp://x']}
        paths:
          /a:
            get: {x-gateway: {upstream: cats}, responses: {'200': {description: ok}}}
          /b:
            get: {x-gateway: {upstream: dogs}, responses: {'200': {description: ok}}}
        """)
    (tmp_path / "api.yaml").write_text(spec)
    proc = _gwc("validate", "api.yaml", "--format", "json", cwd=tmp_path)
    assert proc.returncode == 1
    codes = sorted(d["code"] for d in json.loads(proc.stdout))
    assert codes == ["GW032", "GW032", "GW033", "GW039"], codes


def test_failed_build_keeps_previous_output(tmp_path, repo_root):
    spec = repo_root / "examples" / "petstore" / "api.yaml"
    out = tmp_path / "out"
    assert _gwc("build", str(spec), "-o", str(out), cwd=tmp_path).returncode == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.yaml"
    bad.write_text("openapi: 3.0.3\ninfo: [\n")
    proc = _gwc("build", str(bad), "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 1
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "staging directories must be cleaned up"


def test_refuses_to_replace_a_foreign_directory(tmp_path, repo_root):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    proc = _gwc("build", str(repo_root / "examples/petstore/api.yaml"), "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 1
    assert "GW050" in proc.stderr
    assert (out / "precious.txt").read_text() == "keep me"


def test_missing_file(tmp_path):
    proc = _gwc("validate", "nope.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert "nope.yaml: error[GW003]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_errors_inside_referenced_files_are_found(tmp_path):
    """Referenced files are validated in place, located at the $ref that brings them in."""
    (tmp_path / "api.yaml").write_text(HEADER + UPSTREAM + "paths:\n  /a: {$ref: 'paths.yaml#/a'}\n")
    (tmp_path / "paths.yaml").write_text("a:\n  get:\n    responses: {'200': {descriptio: ok}}\n")
    proc = _gwc("validate", "--no-cache", "api.yaml", "--format", "json", cwd=tmp_path)
    assert proc.returncode == 1
    diags = json.loads(proc.stdout)
    assert [(d["code"], d["pointer"]) for d in diags] == [("GW010", "/paths/~1a/get/responses/200")]
    assert diags[0]["line"] == 8, "reported at the $ref that brings the file in"


def test_default_contradicting_its_schema_is_a_located_warning(tmp_path):
    """Such a default changes nothing at runtime: the build succeeds and says where it is."""
    (tmp_path / "api.yaml").write_text(HEADER + UPSTREAM + textwrap.dedent("""\
        paths:
          /a:
            get:
              parameters: [{name: q, in: query, schema: {type: string, enum: [1, 3], default: '1'}}]
              responses: {'200': {description: ok}}
        """))
    proc = _gwc("build", "api.yaml", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "api.yaml:10:87: warning[GW013]: default \"1\" does not match its own schema" in proc.stderr
    assert "(at /paths/~1a/get/parameters/0/schema/default)" in proc.stderr


# --------------------------------------------------------------------------- traffic (issue 9)

# Cases as above, plus `files` (more files next to the spec), `diag_file`
# (the file the diagnostic names, default the spec) and `xfail` (a known bug).
# A `rate_limit` is one limit or a list (oneOf): its schema errors must name
# the member that is wrong, not the branch whose type does not fit.
OPERATION_A = "paths:\n  /a:\n    get:\n      operationId: getA\n      responses: {'200': {description: ok}}\n"
TRAFFIC_CASES = [
    {
        "name": "traffic-rate-zero",
        "spec": HEADER + UPSTREAM + "  rate_limit: {rate: 0/s}\n" + OPERATION_A,
        "code": "GW090",
        "pointer": "/x-gateway/rate_limit/rate",
        "line": 7,
        "message": "a rate of 0 admits nothing",
    },
    {
        "name": "traffic-rate-zero-in-operation-list",
        "spec": HEADER + UPSTREAM + OPERATION_A + "      x-gateway: {rate_limit: [{rate: 5/s}, {rate: 0/min}]}\n",
        "code": "GW090",
        "pointer": "/paths/~1a/get/x-gateway/rate_limit/1/rate",
        "line": 12,
    },
    {
        "name": "traffic-rate-unparsable",
        "spec": HEADER + UPSTREAM + "  rate_limit: {rate: 10/day}\n" + OPERATION_A,
        "code": "GW021",
        "pointer": "/x-gateway/rate_limit/rate",
        "line": 7,
        "message": "'10/day' does not match",
    },
    {
        "name": "traffic-rate-unparsable-in-list",
        "spec": HEADER + UPSTREAM + "  rate_limit: [{rate: 10/s}, {rate: ten/s}]\n" + OPERATION_A,
        "code": "GW021",
        "pointer": "/x-gateway/rate_limit/1/rate",
        "message": "'ten/s' does not match",
    },
    {
        "name": "traffic-rate-unparsable-code-and-line",
        "spec": HEADER + UPSTREAM + "  rate_limit: {rate: 10/day}\n" + OPERATION_A,
        "code": "GW021",
        "line": 7,
    },
    {
        "name": "traffic-plan-rate-unparsable",
        "spec": HEADER + UPSTREAM + "  plans: {free: {rate: 1/day}}\n" + OPERATION_A,
        "code": "GW021",
        "pointer": "/x-gateway/plans/free/rate",
        "line": 7,
        "message": "'1/day' does not match",
    },
    {
        "name": "traffic-burst-negative",
        "spec": HEADER + UPSTREAM + "  rate_limit: {rate: 10/s, burst: -1}\n" + OPERATION_A,
        "code": "GW021",
        "pointer": "/x-gateway/rate_limit/burst",
        "message": "-1 is less than the minimum of 0",
    },
    {
        "name": "traffic-plan-burst-negative",
        "spec": HEADER + UPSTREAM + "  plans: {free: {rate: 1/s, burst: -2}}\n" + OPERATION_A,
        "code": "GW021",
        "pointer": "/x-gateway/plans/free/burst",
        "line": 7,
        "message": "-2 is less than the minimum of 0",
    },
    {
        "name": "traffic-fleet-without-redis",
        "spec": HEADER + UPSTREAM + "  rate_limit: {rate: 10/s, scope: fleet}\n" + OPERATION_A,
        "code": "GW091",
        "pointer": "/x-gateway/rate_limit/scope",
        "line": 7,
    },
    {
        "name": "traffic-plan-fleet-without-redis",
        "spec": HEADER + UPSTREAM + "  plans: {free: {rate: 1/s, scope: fleet}}\n" + OPERATION_A,
        "code": "GW091",
        "pointer": "/x-gateway/plans/free/scope",
        "line": 7,
    },
    {
        "name": "traffic-unknown-key-source",
        "spec": HEADER + UPSTREAM + "  rate_limit: {rate: 10/s, key: cookie.session}\n" + OPERATION_A,
        "code": "GW021",
        "pointer": "/x-gateway/rate_limit/key",
        "message": "'cookie.session' does not match",
    },
    {
        "name": "traffic-unknown-key-source-code-and-line",
        "spec": HEADER + UPSTREAM + OPERATION_A + "      x-gateway: {rate_limit: {rate: 10/s, key: cookie.session}}\n",
        "code": "GW021",
        "line": 12,
    },
    {
        "name": "traffic-duplicate-limit-names",
        "spec": HEADER + UPSTREAM + "  rate_limit: [{name: a, rate: 1/s}, {name: a, rate: 2/s}]\n" + OPERATION_A,
        "code": "GW090",
        "pointer": "/x-gateway/rate_limit/1/name",
        "line": 7,
    },
    {
        "name": "traffic-plan-claim-on-api-key-scheme",
        "spec": HEADER + UPSTREAM + "security: [{k: []}]\ncomponents:\n  securitySchemes:\n"
                "    k: {type: apiKey, in: header, name: X-K, x-gateway: {plan_claim: plan}}\n" + OPERATION_A,
        "code": "GW093",
        "pointer": "/components/securitySchemes/k/x-gateway/plan_claim",
        "line": 10,
        "message": "plan_claim needs a JWT scheme",
    },
    {
        "name": "traffic-key-file-names-undeclared-plan",
        "spec": HEADER + UPSTREAM + "  keys: keys.yaml\n  plans: {free: {rate: 1/s}}\nsecurity: [{k: []}]\ncomponents:\n"
                "  securitySchemes:\n    k: {type: apiKey, in: header, name: X-K}\n" + OPERATION_A,
        "files": {"keys.yaml": "consumers:\n- id: alice\n  key_sha256: " + "ab" * 32 + "\n  plan: gold\n  enabled: true\n"},
        "diag_file": "keys.yaml",
        "code": "GW092",
        "pointer": "/consumers/0/plan",
        "line": 4,
        "message": "consumer plan 'gold' is not declared",
    },
    {
        "name": "traffic-default-plan-undeclared",
        "spec": HEADER + UPSTREAM + "  plans: {free: {rate: 1/s}}\n  default_plan: gold\n" + OPERATION_A,
        "code": "GW092",
        "pointer": "/x-gateway/default_plan",
        "line": 8,
        "message": "default_plan 'gold' is not a declared plan",
    },
    {
        "name": "traffic-plan-operation-unknown",
        "spec": HEADER + UPSTREAM + "  plans: {free: {rate: 1/s, operations: {getB: {rate: 1/s}}}}\n" + OPERATION_A,
        "code": "GW092",
        "pointer": "/x-gateway/plans/free/operations/getB",
        "line": 7,
        "message": "'getB'",
    },
    {
        "name": "traffic-week-quota-offset-out-of-range",
        "spec": HEADER + UPSTREAM + "  plans: {free: {quota: {limit: 10, period: week, offset: 7}}}\n" + OPERATION_A,
        "code": "GW090",
        "pointer": "/x-gateway/plans/free/quota/offset",
        "line": 7,
        "message": "at most 6",
    },
    {
        "name": "traffic-day-quota-offset",
        "spec": HEADER + UPSTREAM + "  plans: {free: {quota: {limit: 10, period: day, offset: 1}}}\n" + OPERATION_A,
        "code": "GW090",
        "pointer": "/x-gateway/plans/free/quota/offset",
        "message": "at most 0",
    },
    {
        "name": "traffic-month-quota-offset-beyond-schema",
        "spec": HEADER + UPSTREAM + "  plans: {free: {quota: {limit: 10, period: month, offset: 28}}}\n" + OPERATION_A,
        "code": "GW021",
        "pointer": "/x-gateway/plans/free/quota/offset",
        "line": 7,
        "message": "28 is greater than the maximum of 27",
    },
    {
        "name": "traffic-redis-url-and-cluster",
        "spec": HEADER + UPSTREAM + "  redis: {url: 'redis://127.0.0.1:6379', cluster: ['redis://127.0.0.1:7000']}\n" + OPERATION_A,
        "code": "GW021",
        "pointer": "/x-gateway/redis",
        "line": 7,
    },
]


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.xfail(strict=True, reason=c["xfail"])] if c.get("xfail") else [])
                                  for c in TRAFFIC_CASES], ids=[c["name"] for c in TRAFFIC_CASES])
def test_bad_traffic_spec_is_a_diagnostic(case, tmp_path):
    for name, text in (case.get("files") or {}).items():
        (tmp_path / name).write_text(text)
    if "diag_file" not in case:
        return test_bad_spec_is_a_diagnostic(case, tmp_path)
    (tmp_path / "api.yaml").write_text(case["spec"])
    proc = _gwc("build", "api.yaml", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()
    matching = [m.groupdict() for m in _DIAG.finditer(proc.stderr) if m.group("code") == case["code"]]
    assert matching, proc.stderr
    d = matching[0]
    assert (d["file"], int(d["line"]), d["ptr"]) == (case["diag_file"], case["line"], case["pointer"]), proc.stderr
    assert case["message"] in d["msg"], proc.stderr


# --------------------------------------------------------------------------- compression (issue 10)

COMPRESSION_CASES = [
    {"name": "compression-level-zero", "spec": HEADER + UPSTREAM + "  compression: {level: 0}\n" + OPERATION_A,
     "code": "GW120", "pointer": "/x-gateway/compression/level", "line": 7, "message": "outside 1-9"},
    {"name": "compression-level-ten-on-operation",
     "spec": HEADER + UPSTREAM + OPERATION_A + "      x-gateway: {compression: {level: 10}}\n",
     "code": "GW120", "pointer": "/paths/~1a/get/x-gateway/compression/level", "line": 12},
    {"name": "compression-level-string", "spec": HEADER + UPSTREAM + "  compression: {level: '5'}\n" + OPERATION_A,
     "code": "GW021", "pointer": "/x-gateway/compression/level", "line": 7},
    {"name": "compression-type-not-a-media-type",
     "spec": HEADER + UPSTREAM + "  compression: {types: [application/json, json]}\n" + OPERATION_A,
     "code": "GW121", "pointer": "/x-gateway/compression/types/1", "line": 7, "message": "not a media type"},
    {"name": "compression-type-wildcard", "spec": HEADER + UPSTREAM + "  compression: {types: ['text/*']}\n" + OPERATION_A,
     "code": "GW121", "pointer": "/x-gateway/compression/types/0", "message": "exact media types only"},
    {"name": "compression-type-injection",
     "spec": HEADER + UPSTREAM + "  compression: {types: ['text/plain; gzip off']}\n" + OPERATION_A,
     "code": "GW121", "pointer": "/x-gateway/compression/types/0"},
    {"name": "compression-type-on-path-item",
     "spec": HEADER + UPSTREAM + "paths:\n  /a:\n    x-gateway:\n      compression: {types: ['text/plain', 'a b/c']}\n"
             "    get:\n      responses: {'200': {description: ok}}\n",
     "code": "GW121", "pointer": "/paths/~1a/x-gateway/compression/types/1", "line": 10},
    {"name": "binary-media-type-not-a-media-type",
     "spec": HEADER + UPSTREAM + "  compression: true\n  binary_media_types: [image/png, png]\n" + OPERATION_A,
     "code": "GW121", "pointer": "/x-gateway/binary_media_types/1", "line": 8, "message": "'png'"},
    {"name": "aws-binary-media-type-not-a-media-type",
     "spec": HEADER + UPSTREAM + OPERATION_A + "x-amazon-apigateway-binary-media-types: ['image~1png', 'image']\n",
     "code": "GW121", "pointer": "/x-amazon-apigateway-binary-media-types/1", "line": 12},
    {"name": "aws-binary-media-types-not-a-list",
     "spec": HEADER + UPSTREAM + OPERATION_A + "x-amazon-apigateway-binary-media-types: image/png\n",
     "code": "GW121", "pointer": "/x-amazon-apigateway-binary-media-types", "line": 12},
    {"name": "compression-min-size-negative", "spec": HEADER + UPSTREAM + "  compression: {min_size: -1}\n" + OPERATION_A,
     "code": "GW122", "pointer": "/x-gateway/compression/min_size", "line": 7, "message": "-1"},
    {"name": "compression-min-size-unparsable",
     "spec": HEADER + UPSTREAM + OPERATION_A + "      x-gateway: {compression: {min_size: 1.5k}}\n",
     "code": "GW122", "pointer": "/paths/~1a/get/x-gateway/compression/min_size", "line": 12, "message": "'1.5k'"},
    {"name": "compression-min-size-words", "spec": HEADER + UPSTREAM + "  compression: {min_size: ten}\n" + OPERATION_A,
     "code": "GW122", "pointer": "/x-gateway/compression/min_size"},
    {"name": "aws-minimum-compression-size-negative",
     "spec": HEADER + UPSTREAM + OPERATION_A + "x-amazon-apigateway-minimum-compression-size: -1\n",
     "code": "GW122", "pointer": "/x-amazon-apigateway-minimum-compression-size", "line": 12},
    {"name": "aws-minimum-compression-size-string",
     "spec": HEADER + UPSTREAM + OPERATION_A + "x-amazon-apigateway-minimum-compression-size: 1k\n",
     "code": "GW122", "pointer": "/x-amazon-apigateway-minimum-compression-size", "line": 12},
    {"name": "compression-brotli-not-a-switch", "spec": HEADER + UPSTREAM + "  compression: {brotli: 'yes'}\n" + OPERATION_A,
     "code": "GW021", "pointer": "/x-gateway/compression/brotli", "line": 7},
]


@pytest.mark.parametrize("case", COMPRESSION_CASES, ids=[c["name"] for c in COMPRESSION_CASES])
def test_bad_compression_spec_is_a_diagnostic(case, tmp_path):
    test_bad_spec_is_a_diagnostic(case, tmp_path)


# --------------------------------------------------------------------------- response cache (issue 10)

PET_GET = ("paths:\n  /pets/{id}:\n    parameters: [{name: id, in: path, required: true, schema: {type: string}}]\n"
           "    get:\n      operationId: getPet\n      responses: {'200': {description: ok}}\n")
CACHE_CASES = [
    {"name": "cache-on-post-without-methods",
     "spec": HEADER + UPSTREAM + "paths:\n  /a:\n    post:\n      x-gateway: {cache: {ttl: 30s}}\n      responses: {'200': {description: ok}}\n",
     "code": "GW110", "pointer": "/paths/~1a/post/x-gateway/cache", "line": 10, "message": "add POST to cache.methods"},
    {"name": "cache-on-post-methods-get-only",
     "spec": HEADER + UPSTREAM + "paths:\n  /a:\n    post:\n      x-gateway:\n        cache: {methods: [GET]}\n      responses: {'200': {description: ok}}\n",
     "code": "GW110", "pointer": "/paths/~1a/post/x-gateway/cache/methods", "line": 11},
    {"name": "cache-on-put-not-a-cache-method",
     "spec": HEADER + UPSTREAM + "paths:\n  /a:\n    put:\n      x-gateway: {cache: {methods: [PUT]}}\n      responses: {'200': {description: ok}}\n",
     "code": "GW021", "pointer": "/paths/~1a/put/x-gateway/cache/methods/0"},
    {"name": "cache-key-undeclared-query",
     "spec": HEADER + UPSTREAM + PET_GET + "      x-gateway: {cache: {key: [path.id, query.lang]}}\n",
     "code": "GW111", "pointer": "/paths/~1pets~1{id}/get/x-gateway/cache/key/1", "line": 13, "message": "declares no query parameter 'lang'"},
    {"name": "cache-key-undeclared-path-parameter",
     "spec": HEADER + UPSTREAM + PET_GET + "      x-gateway: {cache: {key: [path.petId]}}\n",
     "code": "GW111", "pointer": "/paths/~1pets~1{id}/get/x-gateway/cache/key/0", "message": "not a path parameter"},
    {"name": "cache-key-undeclared-header-from-root",
     "spec": HEADER + UPSTREAM + "  cache: {key: [header.X-Tenant]}\n" + PET_GET,
     "code": "GW111", "pointer": "/x-gateway/cache/key/0", "line": 7},
    {"name": "cache-key-header-name-nginx-cannot-read",
     "spec": HEADER + UPSTREAM + "paths:\n  /a:\n    get:\n      parameters: [{name: X_Tenant, in: header, schema: {type: string}}]\n"
             "      x-gateway: {cache: {key: [header.X_Tenant]}}\n      responses: {'200': {description: ok}}\n",
     "code": "GW111", "pointer": "/paths/~1a/get/x-gateway/cache/key/0", "message": "letters, digits and `-`"},
    {"name": "cache-key-query-name-nginx-cannot-read",
     "spec": HEADER + UPSTREAM + "paths:\n  /a:\n    get:\n      parameters: [{name: page.size, in: query, schema: {type: string}}]\n"
             "      x-gateway: {cache: {key: [query.page.size]}}\n      responses: {'200': {description: ok}}\n",
     "code": "GW111", "pointer": "/paths/~1a/get/x-gateway/cache/key/0", "message": "letters, digits and `_`"},
    {"name": "cache-key-injection",
     "spec": HEADER + UPSTREAM + PET_GET + "      x-gateway: {cache: {key: ['header.X\"; proxy_cache off; #']}}\n",
     "code": "GW021", "pointer": "/paths/~1pets~1{id}/get/x-gateway/cache/key/0"},
    {"name": "cache-key-unknown-source",
     "spec": HEADER + UPSTREAM + PET_GET + "      x-gateway: {cache: {key: [body.id]}}\n",
     "code": "GW021", "pointer": "/paths/~1pets~1{id}/get/x-gateway/cache/key/0"},
    {"name": "cache-ttl-zero",
     "spec": HEADER + UPSTREAM + "  cache: {ttl: 0s}\n" + PET_GET,
     "code": "GW112", "pointer": "/x-gateway/cache/ttl", "line": 7, "message": "at least 1s"},
    {"name": "cache-ttl-zero-number-on-operation",
     "spec": HEADER + UPSTREAM + PET_GET + "      x-gateway: {cache: {ttl: 0}}\n",
     "code": "GW112", "pointer": "/paths/~1pets~1{id}/get/x-gateway/cache/ttl", "line": 13},
    {"name": "cache-ttl-not-whole-seconds",
     "spec": HEADER + UPSTREAM + "  cache: {ttl: 1500ms}\n" + PET_GET,
     "code": "GW112", "pointer": "/x-gateway/cache/ttl", "message": "whole seconds"},
    {"name": "cache-ttl-unparsable",
     "spec": HEADER + UPSTREAM + "  cache: {ttl: soon}\n" + PET_GET,
     "code": "GW021", "pointer": "/x-gateway/cache/ttl", "line": 7},
    {"name": "cache-stale-not-whole-seconds",
     "spec": HEADER + UPSTREAM + "  cache: {stale_if_error: 250ms}\n" + PET_GET,
     "code": "GW112", "pointer": "/x-gateway/cache/stale_if_error"},
    {"name": "cache-zone-size-zero",
     "spec": HEADER + UPSTREAM + "  cache_zone: {size: '0'}\n  cache: {}\n" + PET_GET,
     "code": "GW113", "pointer": "/x-gateway/cache_zone/size", "line": 7},
    {"name": "cache-zone-bad-size",
     "spec": HEADER + UPSTREAM + "  cache_zone: {size: 10 gigs}\n" + PET_GET,
     "code": "GW021", "pointer": "/x-gateway/cache_zone/size"},
    {"name": "cache-zone-path-parent",
     "spec": HEADER + UPSTREAM + "  cache_zone: {path: ../../etc}\n  cache: {}\n" + PET_GET,
     "code": "GW021", "pointer": "/x-gateway/cache_zone/path", "line": 7},
    {"name": "cache-zone-path-injection",
     "spec": HEADER + UPSTREAM + "  cache_zone: {path: 'cache levels=1 keys_zone=x:1m; include /etc/passwd'}\n  cache: {}\n" + PET_GET,
     "code": "GW021", "pointer": "/x-gateway/cache_zone/path"},
    {"name": "cache-zone-inactive-ms",
     "spec": HEADER + UPSTREAM + "  cache_zone: {inactive: 10ms}\n  cache: {}\n" + PET_GET,
     "code": "GW113", "pointer": "/x-gateway/cache_zone/inactive"},
    {"name": "cache-zone-on-operation",
     "spec": HEADER + UPSTREAM + PET_GET + "      x-gateway: {cache_zone: {size: 1m}}\n",
     "code": "GW020", "pointer": "/paths/~1pets~1{id}/get/x-gateway/cache_zone", "message": "unknown x-gateway key 'cache_zone'"},
]


@pytest.mark.parametrize("case", CACHE_CASES, ids=[c["name"] for c in CACHE_CASES])
def test_bad_cache_spec_is_a_diagnostic(case, tmp_path):
    test_bad_spec_is_a_diagnostic(case, tmp_path)


# CORS (docs/cors.md): each build error, located where the bad value is written.
CORS_OP = "paths:\n  /a:\n    get:\n      operationId: getA\n      responses: {'200': {description: ok}}\n"


def _cors_root(conf: str) -> str:
    return HEADER + UPSTREAM + f"  cors: {conf}\n" + CORS_OP


CORS_CASES = [
    {"name": "cors-star-with-credentials", "spec": _cors_root('{origins: ["*"], credentials: true}'),
     "code": "GW101", "pointer": "/x-gateway/cors/origins/0", "line": 7, "message": "cannot be combined with `credentials: true`"},
    {"name": "cors-star-header-with-credentials", "spec": _cors_root('{origins: ["https://a.test"], credentials: true, headers: ["*"]}'),
     "code": "GW101", "pointer": "/x-gateway/cors/headers/0", "message": "literal name"},
    {"name": "cors-null-origin", "spec": _cors_root('{origins: ["https://a.test", "null"]}'),
     "code": "GW102", "pointer": "/x-gateway/cors/origins/1", "line": 7, "message": "`null` is never allowed"},
    {"name": "cors-origin-with-path", "spec": _cors_root('{origins: ["https://a.test/app"]}'),
     "code": "GW100", "pointer": "/x-gateway/cors/origins/0", "message": "no path"},
    {"name": "cors-origin-trailing-slash", "spec": _cors_root('{origins: ["https://a.test/"]}'),
     "code": "GW100", "pointer": "/x-gateway/cors/origins/0", "message": "trailing '/'"},
    {"name": "cors-origin-without-scheme", "spec": _cors_root('{origins: ["a.test"]}'),
     "code": "GW100", "pointer": "/x-gateway/cors/origins/0", "message": "scheme://host[:port]"},
    {"name": "cors-origin-bad-port", "spec": _cors_root('{origins: ["https://a.test:99999"]}'),
     "code": "GW100", "pointer": "/x-gateway/cors/origins/0", "message": "not 1-65535"},
    {"name": "cors-origin-inner-wildcard", "spec": _cors_root('{origins: ["https://app.*.test"]}'),
     "code": "GW100", "pointer": "/x-gateway/cors/origins/0", "message": "whole leading labels"},
    {"name": "cors-origin-wildcard-tld", "spec": _cors_root('{origins: ["https://*.com"]}'),
     "code": "GW100", "pointer": "/x-gateway/cors/origins/0", "message": "two labels or more"},
    {"name": "cors-origin-userinfo", "spec": _cors_root('{origins: ["https://u@a.test"]}'),
     "code": "GW100", "pointer": "/x-gateway/cors/origins/0", "message": "user information"},
    # Injection: a value that would end the nginx string, the directive or the block.
    {"name": "cors-origin-quote", "spec": _cors_root("{origins: ['https://a.test\" always; add_header X 1']}"),
     "code": "GW100", "pointer": "/x-gateway/cors/origins/0"},
    {"name": "cors-origin-semicolon", "spec": _cors_root('{origins: ["https://a.test;"]}'),
     "code": "GW100", "pointer": "/x-gateway/cors/origins/0"},
    {"name": "cors-origin-brace", "spec": _cors_root('{origins: ["https://a.test{"]}'),
     "code": "GW100", "pointer": "/x-gateway/cors/origins/0"},
    {"name": "cors-origin-newline", "spec": _cors_root('{origins: ["https://a.test\\nadd_header X 1;"]}'),
     "code": "GW100", "pointer": "/x-gateway/cors/origins/0", "message": "control"},
    {"name": "cors-origin-dollar", "spec": _cors_root('{origins: ["https://$host"]}'),
     "code": "GW100", "pointer": "/x-gateway/cors/origins/0"},
    {"name": "cors-header-injection", "spec": _cors_root('{origins: ["https://a.test"], headers: ["X-A\\" always"]}'),
     "code": "GW104", "pointer": "/x-gateway/cors/headers/0", "message": "not a header name"},
    {"name": "cors-expose-semicolon", "spec": _cors_root('{origins: ["https://a.test"], expose: ["X-A;"]}'),
     "code": "GW104", "pointer": "/x-gateway/cors/expose/0", "message": "not a header name"},
    {"name": "cors-forbidden-request-header", "spec": _cors_root('{origins: ["https://a.test"], headers: [X-Ok, Cookie]}'),
     "code": "GW104", "pointer": "/x-gateway/cors/headers/1", "message": "forbidden request header"},
    {"name": "cors-forbidden-sec-header", "spec": _cors_root('{origins: ["https://a.test"], headers: [Sec-Fetch-Mode]}'),
     "code": "GW104", "pointer": "/x-gateway/cors/headers/0", "message": "forbidden request header"},
    {"name": "cors-expose-set-cookie", "spec": _cors_root('{origins: ["https://a.test"], expose: [Set-Cookie]}'),
     "code": "GW104", "pointer": "/x-gateway/cors/expose/0", "message": "never be exposed"},
    {"name": "cors-method-not-declared", "spec": HEADER + UPSTREAM + CORS_OP + "      x-gateway: {cors: {origins: ['https://a.test'], methods: [GET, DELETE]}}\n",
     "code": "GW103", "pointer": "/paths/~1a/get/x-gateway/cors/methods/1", "line": 12, "message": "DELETE is not a method this path declares"},
    {"name": "cors-method-not-declared-path-item", "spec": HEADER + UPSTREAM + "paths:\n  /a:\n    x-gateway: {cors: {origins: ['https://a.test'], methods: [PUT]}}\n"
     "    get:\n      operationId: getA\n      responses: {'200': {description: ok}}\n",
     "code": "GW103", "pointer": "/paths/~1a/x-gateway/cors/methods/0", "line": 9},
    {"name": "cors-without-origins", "spec": HEADER + UPSTREAM + CORS_OP + "      x-gateway: {cors: {credentials: true}}\n",
     "code": "GW105", "pointer": "/paths/~1a/get/x-gateway/cors", "message": "needs `origins`"},
    {"name": "cors-true-without-origins", "spec": _cors_root("true"), "code": "GW105", "pointer": "/x-gateway/cors"},
    {"name": "cors-unknown-key", "spec": _cors_root('{origins: ["https://a.test"], origin: ["https://b.test"]}'),
     "code": "GW020", "pointer": "/x-gateway/cors/origin", "message": "did you mean 'origins'?"},
    {"name": "cors-max-age-negative", "spec": _cors_root('{origins: ["https://a.test"], max_age: -1}'),
     "code": "GW021", "pointer": "/x-gateway/cors/max_age"},
    {"name": "cors-inner-error-in-operation-file-position", "spec": HEADER + UPSTREAM + CORS_OP + "      x-gateway:\n        cors:\n          origins:\n            - https://ok.test\n            - 'NULL'\n",
     "code": "GW102", "pointer": "/paths/~1a/get/x-gateway/cors/origins/1", "line": 16},
    {"name": "cors-aws-star-with-credentials", "spec": HEADER + "x-amazon-apigateway-cors: {allowOrigins: ['*'], allowCredentials: true}\n" + UPSTREAM + CORS_OP,
     "code": "GW101", "pointer": "/x-amazon-apigateway-cors/allowOrigins/0", "line": 3},
    {"name": "cors-aws-unknown-member", "spec": HEADER + "x-amazon-apigateway-cors: {allowOrigin: ['https://a.test']}\n" + UPSTREAM + CORS_OP,
     "code": "GW106", "pointer": "/x-amazon-apigateway-cors", "message": "'allowOrigin' was unexpected"},
    {"name": "cors-aws-bad-method", "spec": HEADER + "x-amazon-apigateway-cors: {allowOrigins: ['https://a.test'], allowMethods: [FETCH]}\n" + UPSTREAM + CORS_OP,
     "code": "GW106", "pointer": "/x-amazon-apigateway-cors/allowMethods", "message": "unknown method 'FETCH'"},
    {"name": "cors-aws-malformed-origin", "spec": HEADER + "x-amazon-apigateway-cors: {allowOrigins: ['https://a.test/x']}\n" + UPSTREAM + CORS_OP,
     "code": "GW100", "pointer": "/x-amazon-apigateway-cors/allowOrigins/0"},
    {"name": "cors-selected-operations-differ", "spec": HEADER + UPSTREAM + "paths:\n  /a:\n    get:\n      operationId: getA\n"
     "      parameters: [{name: v, in: query, required: true, schema: {type: string, enum: ['1']}}]\n"
     "      x-gateway: {cors: {origins: ['https://a.test']}}\n      responses: {'200': {description: ok}}\n"
     "  /a?v=2:\n    get:\n      operationId: getA2\n"
     "      parameters: [{name: v, in: query, required: true, schema: {type: string, enum: ['2']}}]\n"
     "      x-gateway: {cors: {origins: ['https://b.test']}}\n      responses: {'200': {description: ok}}\n",
     "code": "GW107", "message": "a preflight carries neither"},
]


@pytest.mark.parametrize("case", CORS_CASES, ids=[c["name"] for c in CORS_CASES])
def test_bad_cors_spec_is_a_diagnostic(case, tmp_path):
    test_bad_spec_is_a_diagnostic(case, tmp_path)
