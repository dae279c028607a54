"""Generated Lua versus Python's jsonschema on random instances (hypothesis).

The schemas are realistic request schemas; formats and end-anchored patterns
are left out because Python's `re` and format checkers differ from ECMA-262
on their own (they are covered by the official suite instead).
"""
import json

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import run

PET31 = {
    "type": "object",
    "required": ["name", "photoUrls"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "name": {"type": "string", "minLength": 1, "maxLength": 4},
        "category": {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}, "name": {"type": "string"}}},
        "photoUrls": {"type": "array", "maxItems": 3, "items": {"type": "string"}},
        "tags": {"type": "array", "uniqueItems": True, "items": {"type": "object", "properties": {"name": {"type": "string", "pattern": "^[a-z]"}}}},
        "status": {"enum": ["available", "pending", "sold"]},
        "weight": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.5},
        "chip": {"type": ["string", "null"]},
    },
}
SCHEMAS31 = [
    PET31,
    {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "number", "maximum": 1}], "not": {"const": 0.5}},
    {"anyOf": [{"type": "string", "maxLength": 2}, {"type": "array", "minItems": 2}], "if": {"type": "array"},
     "then": {"items": {"type": "integer"}}, "else": {"minLength": 1}},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
    {"type": "array", "contains": {"type": "integer", "minimum": 2}, "minContains": 2, "maxContains": 3},
    {"type": "object", "dependentRequired": {"name": ["id"]}, "dependentSchemas": {"tags": {"required": ["status"]}}},
    {"allOf": [{"properties": {"name": {"type": "string"}}}], "properties": {"id": {}}, "unevaluatedProperties": False},
    {"type": "array", "prefixItems": [{"type": "integer"}], "contains": {"type": "string"}, "unevaluatedItems": False},
    {"patternProperties": {"^x-": {"type": "integer"}}, "propertyNames": {"maxLength": 4}, "additionalProperties": {"type": "boolean"}},
    {"const": {"name": "a", "tags": [1, 2.0, None]}},
    {"$defs": {"node": {"type": "object", "properties": {"id": {"type": "integer"}, "tags": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
     "$ref": "#/$defs/node"},
    {"type": ["integer", "null", "boolean"], "enum": [1, None, True, 2.0]},
    {"type": "object", "minProperties": 1, "maxProperties": 2, "required": ["id"]},
]
SCHEMAS30 = [
    {k: v for k, v in PET31.items()} | {"properties": {**PET31["properties"], "weight": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
                                                       "chip": {"type": "string"}}},
    {"type": "integer", "maximum": 3, "exclusiveMaximum": True, "multipleOf": 1},
    {"allOf": [{"type": "object"}], "anyOf": [{"required": ["id"]}, {"required": ["name"]}], "not": {"required": ["status"]}},
    {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 2}, "uniqueItems": True},
]

KEYS = ["id", "name", "category", "photoUrls", "tags", "status", "weight", "chip", "x-a", "x-bb", "other"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 5), st.sampled_from([0.5, 1.0, 2.0, -1.5, 1e20, 3]),
    st.floats(-10, 10, allow_nan=False, allow_infinity=False),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=5),
    st.sampled_from(["available", "sold", "a", "ab", "Rex", "é", "日本", "x-a"]),
)
values = st.recursive(scalars, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.sampled_from(KEYS), c, max_size=5)), max_leaves=12)
pets = st.fixed_dictionaries(
    {"name": st.sampled_from(["Rex", "", "Max12", "é"]), "photoUrls": st.lists(st.sampled_from(["u", 1]), max_size=4)},
    optional={"id": st.integers(-1, 3), "tags": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "B", "c"])}), max_size=3),
              "status": st.sampled_from(["sold", "gone"]), "weight": st.sampled_from([0, 0.5, 1.25, 2, -1]),
              "chip": st.sampled_from([None, "x", 3]), "category": st.fixed_dictionaries({}, optional={"id": st.integers(0, 2), "name": values})})
# Shapes that the array and const schemas accept now and then.
arrays = st.lists(st.one_of(st.integers(0, 4), st.sampled_from(["a", 1.0, "b"])), max_size=5)
consts = st.sampled_from([{"name": "a", "tags": [1, 2.0, None]}, {"name": "a", "tags": [1.0, 2, None]}, {"name": "a", "tags": [1, 2]}])
instances = st.one_of(values, pets, arrays, consts)


def _check(lua, schemas, dialect, validator, batch):
    cases = [(i, inst) for inst in batch for i in range(len(schemas))]
    results = run(lua, schemas, cases, dialect)
    for (i, inst), res in zip(cases, results):
        expected = validator(schemas[i]).is_valid(inst)
        assert res.get("valid") == expected, (dialect, i, json.dumps(inst), res)
        if not expected:
            assert res["errors"], "an invalid instance must report at least one error"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(instances, min_size=40, max_size=40))
def test_agrees_with_jsonschema_2020_12(lua, batch):
    _check(lua, SCHEMAS31, "oas31", jsonschema.Draft202012Validator, batch)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(instances, min_size=40, max_size=40))
def test_agrees_with_jsonschema_draft4(lua, batch):
    _check(lua, SCHEMAS30, "oas30", jsonschema.Draft4Validator, batch)
