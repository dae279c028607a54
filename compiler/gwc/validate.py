"""Stage 2: structural OpenAPI validation, then x-gateway against schemas/.

Every problem is collected; nothing stops at the first one.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import replace
from functools import lru_cache
from typing import Any, Dict, Iterator, List, Optional, Tuple

import jsonschema_rs

from . import openapi_structure
from .cache import ValidationCache
from .diagnostics import ERROR, Diagnostic, escape_pointer_token
from .load import Document, LoadError, SourceFile, walk_refs
from .paths import TemplateError, parse_template
from .resources import SCHEMA_BASE, schemas
from .schema_defaults import resolved_anywhere

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_OPENAPI_VERSION = re.compile(r"^3\.(0|1)\.\d+$")
_MAX_MESSAGE = 240


@lru_cache(maxsize=None)
def _registry():
    from referencing import Registry, Resource

    resources = [(uri, Resource.from_contents(doc)) for uri, doc in schemas().items()]
    return Registry().with_resources(resources)


def _level_schema(level: str) -> dict:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": f"{SCHEMA_BASE}x-gateway.json#/$defs/{level}"}


@lru_cache(maxsize=None)
def level_validator(level: str):
    """Validator for the x-gateway object at one level: root, pathItem or
    operation; the one that explains errors (jsonschema keeps each error's
    schema and context, which the diagnostics use)."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_level_schema(level), registry=_registry())


@lru_cache(maxsize=None)
def _level_checker(level: str):
    """The compiled twin of level_validator: most documents are valid, and
    then jsonschema (about 0.1 s to import) is never needed."""
    registry = jsonschema_rs.Registry(list(schemas().items()))
    return jsonschema_rs.Draft202012Validator(_level_schema(level), registry=registry, validate_formats=False)


def _diag(code: str, message: str, src: SourceFile, ptr: str, key: bool = False) -> Diagnostic:
    line, col = src.position(ptr, key=key)
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 1] + "…"
    return Diagnostic(code, message, src.display, line, col, ptr)


def check_openapi_version(doc: Document) -> List[Diagnostic]:
    data = doc.data
    src = doc.root
    if not isinstance(data, dict):
        return [_diag("GW002", "not an OpenAPI document: the top level must be a mapping", src, "")]
    version = data.get("openapi")
    if version is None:
        hint = " (Swagger 2.0 is not supported; convert it to OpenAPI 3)" if "swagger" in data else ""
        return [_diag("GW002", f"not an OpenAPI 3.0 or 3.1 document: no 'openapi' field{hint}", src, "")]
    if not isinstance(version, str) or not _OPENAPI_VERSION.match(version):
        return [_diag("GW002", f"unsupported OpenAPI version {version!r}: gwc reads 3.0.x and 3.1.x", src, "/openapi")]
    return []


def check_refs(doc: Document) -> List[Diagnostic]:
    """Resolve every $ref in the root file and, transitively, in referenced files."""
    out: List[Diagnostic] = []
    pending = [doc.root]
    visited = set()
    while pending:
        src = pending.pop()
        if src.path in visited:
            continue
        visited.add(src.path)
        for ptr, ref in walk_refs(src.data):
            try:
                _, target_src, _ = doc.resolve(ref, src)
            except LoadError as exc:
                d = exc.diag
                if d.file == src.display or not d.line:
                    out.append(_diag(d.code, d.message, src, ptr))
                else:
                    out.append(d)
                continue
            if target_src.path not in visited:
                pending.append(target_src)
    return out


def _inline_external(doc: Document, value: Any, src: SourceFile, active: frozenset) -> Any:
    """A copy of value with every $ref that leaves the root file replaced by its target.

    Referenced files are thus validated in place, located at the $ref that brings
    them in. A reference back into the root file becomes a local one; a cycle
    through other files is cut with {} once it has been inlined."""
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and (src is not doc.root or not ref.startswith("#")):
            try:
                target, target_src, target_ptr = doc.resolve(ref, src)
            except LoadError:
                return value
            if target_src is doc.root:
                return {**value, "$ref": "#" + target_ptr}
            key = (target_src.path, target_ptr)
            if key in active:
                return {}
            return _inline_external(doc, target, target_src, active | {key})
        return {k: _inline_external(doc, v, src, active) for k, v in value.items()}
    if isinstance(value, list):
        return [_inline_external(doc, v, src, active) for v in value]
    return value


def check_openapi_structure(doc: Document) -> List[Diagnostic]:
    data = doc.data if len(doc.files) == 1 else _inline_external(doc, doc.data, doc.root, frozenset())
    try:
        problems = openapi_structure.problems(data)
    except RecursionError:
        return [_diag("GW010", "invalid OpenAPI: the document nests too deeply to check", doc.root, "")]
    out = []
    for code, message, ptr, key, severity in problems:
        d = _diag(code, message, doc.root, ptr, key=key)
        out.append(replace(d, severity=severity) if severity != ERROR else d)
    return out


def gateway_locations(doc: Document) -> Iterator[Tuple[str, Any, SourceFile, str]]:
    """Yield (level, x-gateway value, file, pointer) for every x-gateway object."""
    data = doc.data
    root = doc.root
    if "x-gateway" in data:
        yield "root", data["x-gateway"], root, "/x-gateway"
    components = data.get("components")
    schemes = components.get("securitySchemes") if isinstance(components, dict) else None
    if isinstance(schemes, dict):
        for name, scheme in schemes.items():
            ptr = "/components/securitySchemes/" + escape_pointer_token(name)
            try:
                scheme, src, ptr = doc.deref(scheme, root, ptr)
            except LoadError:
                continue
            if isinstance(scheme, dict) and "x-gateway" in scheme:
                yield "securityScheme", scheme["x-gateway"], src, ptr + "/x-gateway"
    paths = data.get("paths")
    if not isinstance(paths, dict):
        return
    for path_key, item in paths.items():
        if path_key.startswith("x-"):
            continue
        item_ptr = "/paths/" + escape_pointer_token(path_key)
        try:
            item, src, ptr = doc.deref(item, root, item_ptr)
        except LoadError:
            continue
        if not isinstance(item, dict):
            continue
        if "x-gateway" in item:
            yield "pathItem", item["x-gateway"], src, ptr + "/x-gateway"
        for method in HTTP_METHODS:
            op = item.get(method)
            if isinstance(op, dict) and "x-gateway" in op:
                yield "operation", op["x-gateway"], src, f"{ptr}/{method}/x-gateway"


def _known_keys(err: ValidationError) -> List[str]:
    props = err.schema.get("properties", {}) if isinstance(err.schema, dict) else {}
    return sorted(props)


def _suggest(key: str, value: Any, err: ValidationError, validator: Draft202012Validator) -> List[str]:
    """Close key names, preferring those whose schema accepts the misplaced value."""
    known = _known_keys(err)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    props = err.schema.get("properties", {})
    fitting = [c for c in close if _json_type_fits(_declared_type(props[c]), value)]
    return (fitting or close)[:1]


def _declared_type(schema: dict) -> Any:
    return resolved_anywhere(schema).get("type")


_JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}


def _json_type_fits(expected: Any, value: Any) -> bool:
    if expected is None:
        return True
    names = expected if isinstance(expected, list) else [expected]
    return any(isinstance(value, _JSON_TYPES.get(n, object)) for n in names)


def _fitting_branch_errors(err: ValidationError) -> List[ValidationError]:
    """The errors of the oneOf/anyOf branches whose type the value has (no type error at the branch's top)."""
    by_branch: Dict[Any, List[ValidationError]] = {}
    for e in err.context:
        branch = e.relative_schema_path[0] if e.relative_schema_path else None
        by_branch.setdefault(branch, []).append(e)
    out: List[ValidationError] = []
    for errors in by_branch.values():
        if not any(e.validator == "type" and not list(e.relative_path) for e in errors):
            out.extend(errors)
    return out


def _schema_error_diags(err: ValidationError, src: SourceFile, base: str, validator: Draft202012Validator) -> Iterator[Diagnostic]:
    ptr = base + "".join("/" + escape_pointer_token(p) for p in err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = _known_keys(err)
        for key in sorted(k for k in err.instance if k not in known):
            hint = _suggest(key, err.instance[key], err, validator)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(known)}"
            yield _diag("GW020", f"unknown x-gateway key {key!r}{suggestion}", src, ptr + "/" + escape_pointer_token(key), key=True)
        return
    if err.validator in ("oneOf", "anyOf") and err.context:
        fitting = _fitting_branch_errors(err)
        if fitting:
            # The value has the shape of a branch: say what is wrong inside it, where it is.
            deepest = max(fitting, key=lambda e: (len(list(e.relative_path)), e.validator != "type"))
            if deepest.validator == "additionalProperties":
                yield from _schema_error_diags(deepest, src, ptr, validator)
                return
            ptr += "".join("/" + escape_pointer_token(p) for p in deepest.relative_path)
            message = deepest.message
        else:
            best = min(err.context, key=lambda e: (len(list(e.relative_path)), e.validator != "type"))
            message = best.message
    else:
        message = err.message
    field = ptr.rsplit("/", 1)[-1] if ptr != base else "x-gateway"
    yield _diag("GW021", f"invalid value for {field!r}: {message}", src, ptr)


def check_gateway(doc: Document) -> List[Diagnostic]:
    out: List[Diagnostic] = []
    for level, value, src, ptr in gateway_locations(doc):
        if _level_checker(level).is_valid(value):
            continue
        validator = level_validator(level)
        for err in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path))):
            out.extend(_schema_error_diags(err, src, ptr, validator))
    return out


def check_path_templates(doc: Document) -> List[Diagnostic]:
    paths = doc.data.get("paths")
    out = []
    for key in paths if isinstance(paths, dict) else ():
        if key.startswith("x-"):
            continue  # a specification extension of the Paths object, not a path
        try:
            parse_template(key)
        except TemplateError as exc:
            out.append(_diag("GW034", f"invalid path template {key!r}: {exc}", doc.root, "/paths/" + escape_pointer_token(key), key=True))
    return out


def validate(doc: Document, structural: bool = True, cache: Optional[ValidationCache] = None) -> List[Diagnostic]:
    diags = check_openapi_version(doc)
    if diags:
        return diags
    # The structural rules read path templates and follow local $refs, so those come first.
    blocking = check_refs(doc) + check_path_templates(doc)
    diags.extend(blocking)
    if structural and not blocking:
        hashes = doc.input_hashes()  # complete: check_refs loaded every referenced file
        if cache is None or not cache.hit(hashes):
            structure = check_openapi_structure(doc)
            diags.extend(structure)
            if cache is not None and not structure:
                cache.record(hashes)
    diags.extend(check_gateway(doc))
    return diags
