"""Mutated specs never crash the compiler: every outcome is a value or diagnostics."""
import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gwc import pipeline
from gwc.render import RenderOptions

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**12) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _mutate(spec, where, action, new_value, new_key):
    doc = copy.deepcopy(spec)
    parent = doc
    for token in where[:-1]:
        parent = parent[token]
    last = where[-1] if where else None
    if last is None:
        return doc
    if action == "replace":
        parent[last] = new_value
    elif action == "delete":
        del parent[last]
    elif action == "add" and isinstance(parent[last], dict):
        parent[last][new_key] = new_value
    return doc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_petstore_never_crashes(data, repo_root, tmp_path):
    spec = yaml.safe_load((repo_root / "examples/petstore/api.yaml").read_text())
    candidates = list(_paths(spec))
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(candidates))
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        new_value = data.draw(JSON_VALUES)
        new_key = data.draw(st.sampled_from(["x-gateway", "upstream", "mock", "path", "servers", "$ref", "listen", "zz", "get", "/x/{y}"]))
        spec = _mutate(spec, where, action, new_value, new_key)
        candidates = list(_paths(spec))
    target = tmp_path / "api.yaml"
    target.write_text(yaml.safe_dump(spec, allow_unicode=True))
    result = pipeline.build(str(target), RenderOptions(target="nginx-lua"))  # must not raise
    assert result.ok == (result.files is not None)
    for d in result.diagnostics:
        assert d.code.startswith("GW") and d.file
