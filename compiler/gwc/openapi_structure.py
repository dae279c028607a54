"""OpenAPI structural check: the official OpenAPI 3.0 / 3.1 JSON Schemas run by
a compiled validator (jsonschema-rs), then the rules those schemas cannot state.

openapi-spec-validator did both in pure Python and took 16 s on GitHub's 5.7 MB
description; the schema pass here takes tens of milliseconds, and the rules
below are one walk over the document. The tests cross-check both.
"""
from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import jsonschema_rs

from .diagnostics import WARNING, Diagnostic, escape_pointer_token
from .resources import schemas_dir

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_TEMPLATE_VAR = re.compile(r"\{([^{}]*)\}")
_OAS31_BASE_DIALECT = "https://spec.openapis.org/oas/3.1/dialect/base"
_OAS31_SCHEMA_ID = "https://spec.openapis.org/oas/3.1/schema/2022-10-07"
_DRAFT4 = "http://json-schema.org/draft-04/schema#"
_DRAFT2020 = "https://json-schema.org/draft/2020-12/schema"
# Subschema keywords whose value is one schema, a list of schemas or a map of them.
_ONE = ("items", "not", "additionalProperties", "contains", "propertyNames", "if", "then", "else",
        "unevaluatedItems", "unevaluatedProperties", "additionalItems", "contentSchema")
_LIST = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")

# A located problem: (code, message, pointer, pointer names a key, severity).
Problem = Tuple[str, str, str, bool, str]


def _read(name: str) -> dict:
    return json.loads((schemas_dir() / "openapi" / name).read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def validator(minor: str, base_dialect: bool = True):
    """The compiled validator of one OpenAPI minor version.

    For 3.1 the official document schema leaves Schema Objects open
    (`$dynamicRef: #meta`); like the official schema-base variant, the OAS base
    dialect is bound to that anchor, unless the document declares another
    jsonSchemaDialect."""
    if minor == "3.0":
        return jsonschema_rs.Draft4Validator(_read("3.0.json"), validate_formats=False)
    if not base_dialect:
        return jsonschema_rs.Draft202012Validator(_read("3.1.json"), validate_formats=False)
    registry = jsonschema_rs.Registry([
        (_OAS31_SCHEMA_ID, _read("3.1.json")),
        (_OAS31_BASE_DIALECT, _read("3.1-dialect.json")),
        ("https://spec.openapis.org/oas/3.1/meta/base", _read("3.1-meta.json")),
    ])
    wrapper = {
        "$id": "https://gwc.dev/schemas/openapi/3.1-schema-base",
        "$schema": _DRAFT2020,
        "$ref": _OAS31_SCHEMA_ID,
        "$defs": {"schema": {"$dynamicAnchor": "meta", "$ref": _OAS31_BASE_DIALECT}},
    }
    return jsonschema_rs.Draft202012Validator(wrapper, registry=registry, validate_formats=False)


def schema_versions() -> str:
    """What the structural verdict depends on besides the input: for the cache key."""
    names = sorted(p.name for p in (schemas_dir() / "openapi").glob("*.json"))
    material = "".join((schemas_dir() / "openapi" / n).read_text(encoding="utf-8") for n in names)
    return f"jsonschema-rs {_package_version('jsonschema-rs')} schemas {hashlib.sha256(material.encode()).hexdigest()[:16]}"


def _package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - an unknown version only disables cache reuse
        return "unknown"


def _pointer(path) -> str:
    return "".join("/" + escape_pointer_token(p) for p in path)


def _flatten(err) -> Iterator[Any]:
    """The leaf errors under an anyOf/oneOf, every branch."""
    context = getattr(err.kind, "context", None)
    if not context:
        yield err
        return
    for branch in context:
        for sub in branch:
            yield from _flatten(sub)


def _is_reference_branch(err) -> bool:
    # The Reference branch of "Schema | Reference" fails on every non-$ref object:
    # its complaint is never the helpful one.
    return isinstance(err.kind, jsonschema_rs.ValidationErrorKind.Required) and "$ref" in str(err.message)


def _best(err):
    """The most specific error: the deepest instance location, a type mismatch last,
    like the x-gateway check picks among oneOf/anyOf branches."""
    leaves = list(_flatten(err))
    if not leaves:
        return err
    return min(leaves, key=lambda e: (-len(e.instance_path), _is_reference_branch(e),
                                       isinstance(e.kind, jsonschema_rs.ValidationErrorKind.Type)))


def _schema_problems(data: dict, minor: str) -> List[Problem]:
    base = minor == "3.0" or data.get("jsonSchemaDialect", _OAS31_BASE_DIALECT) == _OAS31_BASE_DIALECT
    out: List[Problem] = []
    for err in validator(minor, base).iter_errors(data):
        best = _best(err)
        ptr = _pointer(best.instance_path)
        kind = best.kind
        if isinstance(kind, jsonschema_rs.ValidationErrorKind.AdditionalProperties):
            for key in kind.unexpected:
                out.append(("GW010", f"invalid OpenAPI: unexpected key {key!r}", ptr + "/" + escape_pointer_token(key), True, "error"))
            continue
        out.append(("GW010", f"invalid OpenAPI: {best.message}", ptr, False, "error"))
    return out


class _Walk:
    """One pass over the OpenAPI object graph for the rules the schemas cannot state.

    Each Schema Object is visited where it is written; `$ref`s are not followed
    (their targets are visited where they are defined), so each problem is
    reported once, at its own node."""

    def __init__(self, data: dict, minor: str):
        self.data = data
        self.minor = minor
        self.problems: List[Problem] = []
        self.operation_ids: Dict[str, str] = {}

    def add(self, code: str, message: str, ptr: str, key: bool = False, severity: str = "error") -> None:
        self.problems.append((code, message, ptr, key, severity))

    def local(self, value: Any) -> Any:
        """value with a local $ref followed (several hops); None where it does not resolve."""
        for _ in range(32):
            if not (isinstance(value, dict) and isinstance(value.get("$ref"), str)):
                return value
            value = _resolve_local(self.data, value["$ref"])
        return None

    def run(self) -> List[Problem]:
        data = self.data
        tags = data.get("tags")
        if isinstance(tags, list):
            seen = set()
            for i, tag in enumerate(tags):
                name = tag.get("name") if isinstance(tag, dict) else None
                if isinstance(name, str):
                    if name in seen:
                        self.add("GW010", f"invalid OpenAPI: Duplicate tag name {name!r}", f"/tags/{i}/name")
                    seen.add(name)
        paths = data.get("paths")
        if isinstance(paths, dict):
            for key, item in paths.items():
                if not key.startswith("x-"):
                    self.path_item(item, "/paths/" + escape_pointer_token(key), key)
        webhooks = data.get("webhooks")
        if isinstance(webhooks, dict):
            for key, item in webhooks.items():
                self.path_item(item, "/webhooks/" + escape_pointer_token(key), None)
        comp = data.get("components")
        if isinstance(comp, dict):
            self.each(comp.get("schemas"), "/components/schemas", lambda v, p: self.schema(v, p, top=True))
            self.each(comp.get("parameters"), "/components/parameters", self.parameter)
            self.each(comp.get("headers"), "/components/headers", self.parameter)
            self.each(comp.get("requestBodies"), "/components/requestBodies", self.request_body)
            self.each(comp.get("responses"), "/components/responses", self.response)
            self.each(comp.get("callbacks"), "/components/callbacks", self.callback)
            self.each(comp.get("pathItems"), "/components/pathItems", lambda v, p: self.path_item(v, p, None))
        return self.problems

    @staticmethod
    def each(mapping: Any, ptr: str, fn: Callable[[Any, str], None]) -> None:
        if isinstance(mapping, dict):
            for name, value in mapping.items():
                fn(value, ptr + "/" + escape_pointer_token(name))

    def path_item(self, item: Any, ptr: str, template: Optional[str]) -> None:
        if not isinstance(item, dict) or "$ref" in item:
            item = self.local(item) if template is not None else None
            if not isinstance(item, dict):
                return
        shared = self.parameters(item.get("parameters"), ptr + "/parameters")
        for method in HTTP_METHODS:
            op = item.get(method)
            if isinstance(op, dict):
                self.operation(op, f"{ptr}/{method}", method, template, shared)

    def parameters(self, params: Any, ptr: str) -> List[dict]:
        """Check one parameters list; return its entries with local $refs followed."""
        out = []
        if not isinstance(params, list):
            return out
        seen = set()
        for i, param in enumerate(params):
            p = f"{ptr}/{i}"
            if isinstance(param, dict) and "$ref" not in param:
                self.parameter(param, p)
            resolved = self.local(param)
            if not isinstance(resolved, dict):
                continue
            out.append(resolved)
            key = (resolved.get("name"), resolved.get("in"))
            if not all(isinstance(k, str) for k in key):
                continue  # the schema pass reports the wrong type
            if key in seen:
                self.add("GW010", f"invalid OpenAPI: Duplicate parameter {key[0]!r}", p)
            seen.add(key)
        return out

    def operation(self, op: dict, ptr: str, method: str, template: Optional[str], shared: List[dict]) -> None:
        op_id = op.get("operationId")
        if isinstance(op_id, str):
            if op_id in self.operation_ids and template is not None:
                self.add("GW030", f"duplicate operationId {op_id!r} ({method.upper()} {template} reuses it)", ptr + "/operationId")
            self.operation_ids.setdefault(op_id, ptr)
        own = self.parameters(op.get("parameters"), ptr + "/parameters")
        if template is not None:
            self.path_params(template, method, ptr, own + shared)
        body = op.get("requestBody")
        if isinstance(body, dict) and "$ref" not in body:
            self.request_body(body, ptr + "/requestBody")
        self.each(op.get("responses"), ptr + "/responses", self.response)
        self.each(op.get("callbacks"), ptr + "/callbacks", self.callback)

    def path_params(self, template: str, method: str, ptr: str, params: List[dict]) -> None:
        declared = {p.get("name") for p in params if p.get("in") == "path" and isinstance(p.get("name"), str)}
        # A ?query or #fragment in a path key is no path parameter (see docs/routing.md).
        in_url = set(_TEMPLATE_VAR.findall(re.split(r"[?#]", template, 1)[0]))
        def unresolved(name: str) -> None:
            self.add("GW010", f"invalid OpenAPI: Path parameter '{name}' for '{method}' operation in '{template}' was not resolved", ptr)

        for name in sorted(in_url - declared):
            if not name.endswith("+"):  # AWS-style greedy {proxy+}: the parameter is declared as `proxy`
                unresolved(name)
        for name in sorted(declared - in_url):
            if "{" + name + "+}" not in template:
                unresolved(name)

    def callback(self, cb: Any, ptr: str) -> None:
        if isinstance(cb, dict) and "$ref" not in cb:
            self.each(cb, ptr, lambda v, p: self.path_item(v, p, None))

    def parameter(self, param: Any, ptr: str) -> None:
        if not isinstance(param, dict) or "$ref" in param:
            return
        if "schema" in param:
            self.schema(param["schema"], ptr + "/schema", top=True)
        self.content(param.get("content"), ptr + "/content")

    def request_body(self, body: Any, ptr: str) -> None:
        if isinstance(body, dict) and "$ref" not in body:
            self.content(body.get("content"), ptr + "/content")

    def response(self, resp: Any, ptr: str) -> None:
        if not isinstance(resp, dict) or "$ref" in resp:
            return
        self.each(resp.get("headers"), ptr + "/headers", self.parameter)
        self.content(resp.get("content"), ptr + "/content")

    def content(self, content: Any, ptr: str) -> None:
        if not isinstance(content, dict):
            return
        for media, mt in content.items():
            if not isinstance(mt, dict):
                continue
            mp = ptr + "/" + escape_pointer_token(media)
            if "schema" in mt:
                self.schema(mt["schema"], mp + "/schema", top=True)
            encoding = mt.get("encoding")
            if isinstance(encoding, dict):
                for name, enc in encoding.items():
                    if isinstance(enc, dict):
                        self.each(enc.get("headers"), f"{mp}/encoding/{escape_pointer_token(name)}/headers", self.parameter)

    def schema(self, schema: Any, ptr: str, top: bool = False) -> None:
        if not isinstance(schema, dict) or "$ref" in schema and self.minor == "3.0":
            return
        for kw in _ONE:
            if isinstance(schema.get(kw), dict):
                self.schema(schema[kw], f"{ptr}/{kw}")
        for kw in _LIST:
            subs = schema.get(kw)
            if isinstance(subs, list):
                for i, sub in enumerate(subs):
                    self.schema(sub, f"{ptr}/{kw}/{i}")
        for kw in _MAP:
            subs = schema.get(kw)
            if isinstance(subs, dict):
                for name, sub in subs.items():
                    self.schema(sub, f"{ptr}/{kw}/{escape_pointer_token(name)}")
        if top and isinstance(schema.get("allOf"), list) and isinstance(schema.get("required"), list):
            known = self.properties(schema, 0)
            missing = sorted(r for r in schema["required"] if isinstance(r, str) and r not in known)
            if missing:
                self.add("GW010", f"invalid OpenAPI: Required list has not defined properties: {missing}", ptr + "/required")
        for kw in ("default", "example"):
            if kw in schema:
                self.value_matches(schema, kw, ptr)

    def properties(self, schema: Any, depth: int) -> set:
        """Every property name reachable through allOf/anyOf/oneOf/items/not, $refs followed."""
        schema = self.local(schema)
        if not isinstance(schema, dict) or depth > 32:
            return set()
        props = set(schema["properties"]) if isinstance(schema.get("properties"), dict) else set()
        for kw in ("allOf", "anyOf", "oneOf"):
            if isinstance(schema.get(kw), list):
                for sub in schema[kw]:
                    props |= self.properties(sub, depth + 1)
        for kw in ("items", "not"):
            if isinstance(schema.get(kw), dict):
                props |= self.properties(schema[kw], depth + 1)
        return props

    def value_matches(self, schema: dict, kw: str, ptr: str) -> None:
        value = schema[kw]
        if value is None and (schema.get("nullable") is True or self.minor == "3.0" and kw == "example"):
            return
        try:
            checked = _inline_local(self.data, schema, frozenset(), self.minor)
            if self.minor == "3.0":
                checked = _nullable(checked)
            checked["$schema"] = _DRAFT4 if self.minor == "3.0" else _DRAFT2020
            errors = list(jsonschema_rs.validator_for(checked, validate_formats=True).iter_errors(value))
        except (ValueError, TypeError, jsonschema_rs.ReferencingError):
            return  # a schema that cannot be compiled is reported by the request-validator compiler
        if errors:
            best = _best(errors[0])
            where = _pointer(best.instance_path)
            shown = json.dumps(value)
            if len(shown) > 60:
                shown = shown[:57] + "..."
            self.add("GW013", f"{kw} {shown} does not match its own schema: {best.message}"
                     + (f" (at {where} of the {kw})" if where else ""), f"{ptr}/{kw}", severity=WARNING)


def _resolve_local(data: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        return None
    node = data
    for token in ref[1:].split("/")[1:] if ref != "#" else ():
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    return node


def _inline_local(data: dict, schema: Any, active: frozenset, minor: str) -> Any:
    """A copy of schema with local $refs replaced by their targets, cycles cut to {}."""
    if isinstance(schema, list):
        return [_inline_local(data, s, active, minor) for s in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if ref in active:
            return {}
        target = _resolve_local(data, ref)
        if target is None:
            raise ValueError(ref)
        inlined = _inline_local(data, target, active | {ref}, minor)
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        if minor == "3.0" or not rest:
            return inlined
        return {"allOf": [inlined, _inline_local(data, rest, active, minor)]}
    out = {}
    for k, v in schema.items():
        if k in ("default", "example", "examples", "enum", "const") or k.startswith("x-"):
            out[k] = v  # values, not schemas
        elif k in ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas") and isinstance(v, dict):
            out[k] = {n: _inline_local(data, s, active, minor) for n, s in v.items()}
        else:
            out[k] = _inline_local(data, v, active, minor)
    return out


def _nullable(schema: Any) -> Any:
    """OpenAPI 3.0 `nullable: true` as draft 4 understands it: null also accepted."""
    if isinstance(schema, list):
        return [_nullable(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in ("default", "example", "enum") else _nullable(v)) for k, v in schema.items()}
    if out.get("nullable") is True:
        return {"anyOf": [{"type": "null"}, {k: v for k, v in out.items() if k != "nullable"}]}
    return out


def problems(data: dict) -> List[Problem]:
    minor = "3.1" if str(data.get("openapi", "")).startswith("3.1") else "3.0"
    out = _schema_problems(data, minor)
    out.extend(_Walk(data, minor).run())
    return out
