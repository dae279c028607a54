"""Fill in defaults declared by the JSON Schemas in schemas/.

The schemas are the single source of truth for defaults; the model stage calls
this instead of repeating default values in Python.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any, Dict, Tuple
from urllib.parse import urljoin

from .resources import SCHEMA_BASE, schemas


@lru_cache(maxsize=None)
def _lookup(ref: str, base: str) -> Tuple[dict, str]:
    """The schema a $ref names (shared: callers never mutate it), and its document's URI."""
    uri = urljoin(base, ref)
    doc_uri, _, fragment = uri.partition("#")
    node: Any = schemas()[doc_uri]
    for token in [t for t in fragment.split("/") if t]:
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node, doc_uri


# (id of a schema with a $ref, base) -> (that schema, result). Keeping the schema
# alive keeps its id from being reused; the model asks for the same few hundred
# shipped schema nodes once per operation.
_RESOLVED: Dict[Tuple[int, str], Tuple[dict, Tuple[dict, str]]] = {}


def _resolved(schema: dict, base: str) -> Tuple[dict, str]:
    """Merge a schema's own keywords over its $ref target (one level at a time).

    The result is shared: callers never mutate it."""
    if "$ref" not in schema:
        return schema, base
    key = (id(schema), base)
    hit = _RESOLVED.get(key)
    if hit is not None:
        return hit[1]
    result = _merge_refs(schema, base)
    _RESOLVED[key] = (schema, result)
    return result


def _merge_refs(schema: dict, base: str) -> Tuple[dict, str]:
    seen = 0
    merged = dict(schema)
    while "$ref" in merged and seen < 16:
        target, base = _lookup(merged.pop("$ref"), base)
        merged = {**target, **merged}
        seen += 1
    return merged, base


def resolved_anywhere(schema: dict) -> dict:
    """Resolve a schema's $ref trying the x-gateway document first, then every other one.

    Used only for hints in diagnostics, where the referring document is not known."""
    bases = [SCHEMA_BASE + "x-gateway.json"] + sorted(schemas())
    for base in bases:
        try:
            return _resolved(schema, base)[0]
        except (KeyError, TypeError):
            continue
    return schema


def with_defaults(instance: Any, schema: dict, base: str = SCHEMA_BASE + "x-gateway.json") -> Any:
    """Return a copy of instance with every absent property that has a default filled in."""
    schema, base = _resolved(schema, base)
    if not isinstance(instance, dict):
        return instance
    out = dict(instance)
    props = schema.get("properties", {})
    for key, sub in props.items():
        sub_resolved, sub_base = _resolved(sub, base)
        if key not in out and "default" in sub_resolved:
            out[key] = copy.deepcopy(sub_resolved["default"])
        if key in out:
            out[key] = with_defaults(out[key], sub_resolved, sub_base)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in out:
            if key not in props:
                out[key] = with_defaults(out[key], extra, base)
    return out


@lru_cache(maxsize=None)
def level_schema(level: str) -> dict:
    return {"$ref": f"#/$defs/{level}"}
