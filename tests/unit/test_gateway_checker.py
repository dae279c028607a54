"""The compiled x-gateway checker and the explaining validator agree: a
document the fast path accepts is one jsonschema finds nothing wrong with."""
import subprocess
import sys

import pytest

from gwc import validate

CASES = [
    ("root", {"listen": ["127.0.0.1:8080"], "upstreams": {"a": {"servers": ["http://127.0.0.1:9"]}}, "upstream": "a"}),
    ("root", {"listen": "127.0.0.1:8080"}),
    ("root", {"upstreams": {"a": {"servers": []}}}),
    ("root", {"upstream": 3}),
    ("root", {"lisen": ["127.0.0.1:8080"]}),
    ("operation", {"mock": {"body": {"ok": True}}}),
    ("operation", {"mock": {"status": 99}}),
    ("operation", {"path": "/v2/{id}"}),
    ("operation", {"validate": {"body": False, "max_errors": 0}}),
    ("pathItem", {"upstream": "a"}),
    ("pathItem", {"unknown": 1}),
]


@pytest.mark.parametrize("level, value", CASES)
def test_fast_checker_agrees_with_jsonschema(level, value):
    explained = list(validate.level_validator(level).iter_errors(value))
    assert validate._level_checker(level).is_valid(value) == (not explained), explained


def test_a_valid_spec_builds_without_importing_jsonschema(repo_root):
    code = (
        "import sys; from gwc import pipeline; "
        f"r = pipeline.check({str(repo_root / 'examples' / 'petstore' / 'api.yaml')!r}); "
        "assert r.ok, r.diagnostics; assert 'jsonschema' not in sys.modules, 'imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
