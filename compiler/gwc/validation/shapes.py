"""Which keyword values a schema compiler can use: the JSON shape of each keyword.

A keyword whose value has the wrong shape is dropped with a GW070 diagnostic
before code generation, so no later step meets, say, a boolean `allOf`.
"""
from __future__ import annotations

import math
from typing import Any, Optional

TYPES = ("null", "boolean", "object", "array", "number", "integer", "string")

_SCHEMA = ("additionalItems", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else",
           "unevaluatedItems", "unevaluatedProperties")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_NUMBERS = ("minimum", "maximum", "multipleOf")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains", "maxContains")
_STRINGS = ("pattern", "format", "$ref", "$dynamicRef", "$anchor", "$dynamicAnchor")
_BOOLS = ("uniqueItems", "nullable", "readOnly", "writeOnly")


def _is_schema(v: Any) -> bool:
    return isinstance(v, (dict, bool))


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_count(v: Any) -> bool:
    return _is_num(v) and v >= 0 and float(v).is_integer()


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def shape_error(kw: str, v: Any, d4: bool) -> Optional[str]:
    """Why the value of keyword kw cannot be used, or None when it can."""
    if kw in _SCHEMA:
        return None if _is_schema(v) else "must be a schema"
    if kw == "items":
        return None if _is_schema(v) or (d4 and isinstance(v, list) and all(map(_is_schema, v))) else "must be a schema"
    if kw in _SCHEMA_LISTS:
        return None if isinstance(v, list) and v and all(map(_is_schema, v)) else "must be a non-empty array of schemas"
    if kw in _SCHEMA_MAPS:
        return None if isinstance(v, dict) else "must be an object of schemas"
    if kw == "dependencies":
        return None if isinstance(v, dict) and all(_is_schema(x) or _strings(x) for x in v.values()) else "must map names to schemas or name lists"
    if kw == "dependentRequired":
        return None if isinstance(v, dict) and all(_strings(x) for x in v.values()) else "must map names to name lists"
    if kw in _NUMBERS:
        return None if _is_num(v) else "must be a number"
    if kw in ("exclusiveMinimum", "exclusiveMaximum"):
        return None if (isinstance(v, bool) if d4 else _is_num(v)) else ("must be a boolean" if d4 else "must be a number")
    if kw in _COUNTS:
        return None if _is_count(v) else "must be a non-negative integer"
    if kw in _STRINGS:
        return None if isinstance(v, str) else "must be a string"
    if kw in _BOOLS:
        return None if isinstance(v, bool) else "must be a boolean"
    if kw == "required":
        return None if _strings(v) else "must be an array of strings"
    if kw == "enum":
        return None if isinstance(v, list) else "must be an array"
    if kw == "type":
        ok = (isinstance(v, str) and v in TYPES) or (isinstance(v, list) and all(isinstance(x, str) and x in TYPES for x in v))
        return None if ok else "must be a type name or an array of them"
    if kw == "discriminator":
        return None if isinstance(v, dict) and isinstance(v.get("propertyName"), str) and isinstance(v.get("mapping", {}), dict) else "must be an object with propertyName"
    return None
