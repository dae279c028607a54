"""gwc's structural check (official OpenAPI schemas through jsonschema-rs plus
its own rules) against openapi-spec-validator, which it replaced at runtime.

Each invalid document is data: the code, severity and pointer gwc reports,
and whether openapi-spec-validator also refuses it. Where the two
legitimately differ, `differs` says why. Every structural diagnostic must
carry file, line, column and the pointer of the offending node.
"""
import copy
import json
import textwrap

import pytest
import yaml

from gwc import validate
from gwc.load import Document, SourceFile, load

V30 = "openapi: 3.0.3\ninfo: {title: t, version: '1'}\n"
V31 = "openapi: 3.1.0\ninfo: {title: t, version: '1'}\n"
OK = "{'200': {description: ok}}"


def _paths(body: str) -> str:
    return "paths:\n" + textwrap.indent(textwrap.dedent(body), "  ")


CASES = [
    {
        "name": "response-without-description",
        "spec": V30 + _paths("/a:\n  get: {responses: {'200': {descriptio: ok}}}\n"),
        "expect": [("GW010", "error", "/paths/~1a/get/responses/200")],
        "line": 5,
    },
    {
        "name": "unknown-top-level-key",
        "spec": V30 + "paths: {}\nservrs: []\n",
        "expect": [("GW010", "error", "/servrs")],
        "line": 4,
    },
    {
        "name": "title-not-a-string",
        "spec": "openapi: 3.0.3\ninfo: {title: 7, version: '1'}\npaths: {}\n",
        "expect": [("GW010", "error", "/info/title")],
        "line": 2,
    },
    {
        "name": "no-info",
        "spec": "openapi: 3.0.3\npaths: {}\n",
        "expect": [("GW010", "error", "")],
        "line": 1,
    },
    {
        "name": "parameter-in-body",
        "spec": V30 + _paths("/a:\n  get:\n    parameters: [{name: x, in: body, schema: {type: string}}]\n    responses: " + OK + "\n"),
        "expect": [("GW010", "error", "/paths/~1a/get/parameters/0/in")],
    },
    {
        "name": "path-parameter-not-required",
        "spec": V30 + _paths("/a/{id}:\n  get:\n    parameters: [{name: id, in: path, required: false, schema: {type: string}}]\n    responses: " + OK + "\n"),
        "expect": [("GW010", "error", "/paths/~1a~1{id}/get/parameters/0/required")],
    },
    {
        "name": "undeclared-path-parameter",
        "spec": V30 + _paths("/a/{id}:\n  get: {responses: " + OK + "}\n"),
        "expect": [("GW010", "error", "/paths/~1a~1{id}/get")],
        "message": "Path parameter 'id' for 'get' operation in '/a/{id}' was not resolved",
        "line": 5,
    },
    {
        "name": "path-parameter-not-in-template",
        "spec": V30 + _paths("/a:\n  get:\n    parameters: [{name: id, in: path, required: true, schema: {type: string}}]\n    responses: " + OK + "\n"),
        "expect": [("GW010", "error", "/paths/~1a/get")],
    },
    {
        "name": "duplicate-operation-id",
        "spec": V30 + _paths("/a:\n  get: {operationId: same, responses: " + OK + "}\n/b:\n  get: {operationId: same, responses: " + OK + "}\n"),
        "expect": [("GW030", "error", "/paths/~1b/get/operationId")],
        "line": 7,
    },
    {
        "name": "duplicate-parameter",
        "spec": V30 + _paths("/a:\n  get:\n    parameters:\n    - {name: q, in: query, schema: {type: string}}\n    - {name: q, in: query, schema: {type: integer}}\n    responses: " + OK + "\n"),
        "expect": [("GW010", "error", "/paths/~1a/get/parameters/1")],
        "line": 8,
    },
    {
        "name": "duplicate-tag",
        "spec": V30 + "tags: [{name: a}, {name: a, description: again}]\npaths: {}\n",
        "expect": [("GW010", "error", "/tags/1/name")],
    },
    {
        "name": "allof-required-undefined",
        "spec": V30 + "paths: {}\ncomponents:\n  schemas:\n    A:\n      allOf: [{properties: {x: {type: string}}}]\n      required: [x, y]\n",
        "expect": [("GW010", "error", "/components/schemas/A/required")],
        "line": 8,
    },
    {
        "name": "default-contradicts-schema",
        "spec": V30 + _paths("/a:\n  get:\n    parameters: [{name: q, in: query, schema: {type: string, enum: [1, 3], default: '1'}}]\n    responses: " + OK + "\n"),
        "expect": [("GW013", "warning", "/paths/~1a/get/parameters/0/schema/default")],
        "line": 6,
        "differs": "openapi-spec-validator refuses it; gwc warns, since a default changes nothing at runtime",
    },
    {
        "name": "component-default-contradicts-schema",
        "spec": V30 + "paths: {}\ncomponents:\n  schemas:\n    N:\n      type: integer\n      default: many\n",
        "expect": [("GW013", "warning", "/components/schemas/N/default")],
        "line": 8,
        "differs": "openapi-spec-validator refuses it; gwc warns",
    },
    {
        "name": "example-contradicts-schema",
        "spec": V30 + "paths: {}\ncomponents:\n  schemas:\n    N: {type: object, properties: {n: {type: integer, example: lots}}}\n",
        "expect": [("GW013", "warning", "/components/schemas/N/properties/n/example")],
        "line": 6,
        "note": "openapi-spec-validator does not check examples; gwc warns, so both accept it",
    },
    {
        "name": "nullable-default-null",
        "spec": V30 + "paths: {}\ncomponents:\n  schemas:\n    N: {type: string, nullable: true, default: null}\n",
        "expect": [],
    },
    {
        "name": "default-through-ref",
        "spec": V30 + "paths: {}\ncomponents:\n  schemas:\n    E: {type: string, enum: [a, b]}\n    O: {type: object, properties: {e: {$ref: '#/components/schemas/E'}}, default: {e: c}}\n",
        "expect": [("GW013", "warning", "/components/schemas/O/default")],
        "differs": "openapi-spec-validator refuses it; gwc warns",
    },
    {
        "name": "aws-greedy-path-parameter",
        "spec": V30 + _paths("/{proxy+}:\n  get:\n    parameters: [{name: proxy, in: path, required: true, schema: {type: string}}]\n    responses: " + OK + "\n"),
        "expect": [],
        "differs": "openapi-spec-validator does not know AWS's {proxy+}; gwc routes it",
    },
    {
        "name": "v31-bad-schema-type",
        "spec": V31 + _paths("/a:\n  get:\n    parameters: [{name: q, in: query, schema: {type: strin}}]\n    responses: " + OK + "\n"),
        "expect": [("GW010", "error", "/paths/~1a/get/parameters/0/schema/type")],
        "line": 6,
    },
    {
        "name": "v31-webhooks-only",
        "spec": V31 + "webhooks:\n  ping:\n    post: {responses: " + OK + "}\n",
        "expect": [],
    },
    {
        "name": "v31-default-contradicts-schema",
        "spec": V31 + "paths: {}\ncomponents:\n  schemas:\n    N: {type: [integer, 'null'], minimum: 3, default: 1}\n",
        "expect": [("GW013", "warning", "/components/schemas/N/default")],
        "differs": "openapi-spec-validator refuses it; gwc warns",
    },
    {
        "name": "valid-petstore-like",
        "spec": V30 + _paths("""\
            /pets/{id}:
              parameters: [{name: id, in: path, required: true, schema: {type: integer, default: 1}}]
              get:
                operationId: getPet
                responses:
                  '200':
                    description: ok
                    content: {application/json: {schema: {type: object, properties: {name: {type: string, example: rex}}}}}
            """),
        "expect": [],
    },
]


def _structural(path):
    doc, diags = load(str(path))
    assert doc is not None and not diags
    return doc, validate.validate(doc)


def _spec_validator_errors(data):
    from openapi_spec_validator import OpenAPIV30SpecValidator, OpenAPIV31SpecValidator

    cls = OpenAPIV31SpecValidator if str(data.get("openapi")).startswith("3.1") else OpenAPIV30SpecValidator
    return [e.message for e in cls(data).iter_errors()]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_structural_diagnostics_are_located(case, tmp_path):
    path = tmp_path / "api.yaml"
    path.write_text(case["spec"])
    doc, diags = _structural(path)
    assert [(d.code, d.severity, d.pointer) for d in diags] == case["expect"], [d.format_text() for d in diags]
    for d in diags:
        assert d.file.endswith("api.yaml") and d.line > 0 and d.col > 0
        assert (d.line, d.col) == doc.root.position(d.pointer, key=d.pointer.endswith("/servrs"))
    if "line" in case:
        assert diags[0].line == case["line"], diags[0].format_text()
    if "message" in case:
        assert case["message"] in diags[0].message


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_agrees_with_openapi_spec_validator(case, tmp_path):
    path = tmp_path / "api.yaml"
    path.write_text(case["spec"])
    doc, diags = _structural(path)
    gwc_refuses = any(d.is_error for d in diags)
    osv_refuses = bool(_spec_validator_errors(doc.data))
    if "differs" in case:
        assert gwc_refuses != osv_refuses, f"no longer differs: {case['differs']}"
    else:
        assert gwc_refuses == osv_refuses


def test_json_positions_match_the_yaml_tree(tmp_path):
    """The JSON locator (no YAML composition) puts every diagnostic where the YAML tree does."""
    for case in CASES:
        data = yaml.safe_load(case["spec"])
        for suffix, text in ((".json", json.dumps(data, indent=1)), (".yaml", json.dumps(data, indent=1))):
            (tmp_path / ("api" + suffix)).write_text(text)
        _, as_json = _structural(tmp_path / "api.json")
        _, as_yaml = _structural(tmp_path / "api.yaml")
        assert [(d.line, d.col, d.pointer) for d in as_json] == [(d.line, d.col, d.pointer) for d in as_yaml], case["name"]


# openapi-spec-validator complaints gwc legitimately does not share.
OSV_ONLY = {
    # It checks `pattern` with Python's re, which lacks ECMA-262's \p{L} classes;
    # gwc checks patterns as ECMA-262 when it compiles request validators (GW071).
    "is not a 'regex'": "Python re is not ECMA-262",
}
CORPUS_SIZE = 40
CORPUS_MAX_BYTES = 1_000_000  # openapi-spec-validator takes seconds per MB


@pytest.mark.slow
def test_agrees_on_public_descriptions(capsys):
    """Both accept, or both refuse, a spread of the corpus sample (security
    stripped, one upstream, as tests/corpus builds them)."""
    from corpus import corpus

    api, reason = corpus.fetch()
    if api is None:
        pytest.skip(reason)
    ids = [i for i in corpus.sample_ids() if (api / i).stat().st_size <= CORPUS_MAX_BYTES]
    ids = ids[:: max(1, len(ids) // CORPUS_SIZE)][:CORPUS_SIZE]
    disagree = []
    warned = 0
    for spec_id in ids:
        data = corpus.transform(json.loads((api / spec_id).read_text()))
        src = SourceFile(api / spec_id, spec_id, json.dumps(data), data)
        doc = Document(src)
        diags = validate.check_openapi_structure(doc)
        warned += any(d.code == "GW013" for d in diags)
        gwc_errors = [d.format_text() for d in diags if d.is_error]
        # openapi-spec-validator refuses what gwc warns about (GW013): compare without those values.
        osv_errors = [m for m in _spec_validator_errors(_without(data, [d.pointer for d in diags if d.code == "GW013"]))
                      if not any(marker in m for marker in OSV_ONLY)]
        if bool(gwc_errors) != bool(osv_errors):
            disagree.append(f"{spec_id}: gwc {gwc_errors[:2]} / openapi-spec-validator {osv_errors[:2]}")
    with capsys.disabled():
        print(f"\n{len(ids)} public descriptions cross-checked, {warned} with GW013 warnings")
    assert not disagree, "\n".join(disagree)


def _without(data, pointers):
    data = copy.deepcopy(data)
    for ptr in pointers:
        *parents, last = [t.replace("~1", "/").replace("~0", "~") for t in ptr[1:].split("/")]
        node = data
        for token in parents:
            node = node[int(token)] if isinstance(node, list) else node[token]
        del node[last]
    return data
