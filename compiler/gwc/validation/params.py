"""Parameters and request bodies of one operation -> its Lua validator.

The schema of each parameter and body is compiled by SchemaCompiler; this
module decides how the raw request text becomes a value (style/explode
splitting, scalar coercion) and emits the straight-line function that reads
each parameter and calls the schema's function.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..diagnostics import ERROR, WARNING
from .lua_text import lua_str
from .schema import SchemaCompiler
from .space import Loc, RefError, SchemaSpace

# OpenAPI: these headers are described elsewhere and parameter entries for them are ignored.
IGNORED_HEADERS = {"accept", "content-type", "authorization"}
DEFAULT_STYLE = {"query": "form", "cookie": "form", "path": "simple", "header": "simple"}
ARRAY_STYLES = {"form", "simple", "spaceDelimited", "pipeDelimited"}
JSON_SUFFIX = "+json"
FORM = "application/x-www-form-urlencoded"
SCALARS = ("integer", "number", "boolean", "string")


@dataclass(frozen=True)
class OpProblem:
    code: str
    message: str
    loc: Loc
    severity: str = ERROR


@dataclass
class OperationCode:
    operation_id: str
    max_errors: int
    lines: List[str] = field(default_factory=list)
    tables: List[str] = field(default_factory=list)

    def table(self, text: str) -> str:
        """Registers a constant table; returns a placeholder that render() numbers."""
        self.tables.append(text)
        return f"T[@{len(self.tables)}@]"

    def render(self, base: int) -> str:
        """The op's function; its tables are T[base + 1 ..] of the module."""
        text = "\n".join("    " + line for line in self.lines)
        for i in range(len(self.tables), 0, -1):
            text = text.replace(f"T[@{i}@]", f"T[{base + i}]")
        head = [f"ops[{lua_str(self.operation_id)}] = function(caps)", f"    S.max = {self.max_errors}"]
        return "\n".join(head + ([text] if text else []) + ["end", ""])


# Keywords that never make a value invalid.
ANNOTATIONS = frozenset({
    "title", "description", "example", "examples", "default", "deprecated", "readOnly", "writeOnly",
    "externalDocs", "xml", "$comment", "nullable",
})


def is_json_media(mt: str) -> bool:
    mt = mt.split(";")[0].strip().lower()
    return mt == "application/json" or mt.endswith(JSON_SUFFIX)


class _Op:
    def __init__(self, comp: SchemaCompiler, space: SchemaSpace, loc: Loc, target):
        self.comp = comp
        self.space = space
        self.loc = loc
        self.t = target
        self.problems: List[OpProblem] = []
        self.code = OperationCode(target.operation_id, max(1, min(100, int(target.max_errors))))

    def deref(self, value: Any, loc: Loc) -> Tuple[Any, Loc]:
        for _ in range(32):
            if isinstance(value, dict) and isinstance(value.get("$ref"), str):
                loc = self.space.resolve(value["$ref"], loc)
                value = self.space.node(loc)
            else:
                return value, loc
        raise RefError("$ref chain is circular")

    def problem(self, code: str, message: str, loc: Loc, severity: str = ERROR) -> None:
        self.problems.append(OpProblem(code, message, loc, severity))

    def kind_of(self, schema: Any, loc: Loc) -> Tuple[bool, Optional[str], Any, Loc]:
        """(is array, scalar kind used for coercion, item schema, item loc)."""
        try:
            schema, loc = self.deref(schema, loc)
        except RefError:
            return False, None, schema, loc
        if not isinstance(schema, dict):
            return False, None, schema, loc
        types = schema.get("type")
        types = types if isinstance(types, list) else [types]
        if "array" in types:
            items = schema.get("items", {})
            try:
                items, iloc = self.deref(items, loc.child("items"))
            except RefError:
                return True, None, items, loc
            return True, self.scalar(items), items, iloc
        return False, self.scalar(schema), schema, loc

    def accepts_any_string(self, schema: Any, loc: Loc) -> bool:
        """True when every string is valid: only `type: string` and annotations."""
        try:
            schema, _ = self.deref(schema, loc)
        except RefError:
            return False
        if schema is True or schema == {}:
            return True
        if not isinstance(schema, dict):
            return False
        types = schema.get("type", "string")
        if not (types == "string" or (isinstance(types, list) and "string" in types)):
            return False
        return all(k in ANNOTATIONS or k.startswith("x-") for k in schema if k != "type")

    @staticmethod
    def scalar(schema: Any) -> Optional[str]:
        if not isinstance(schema, dict):
            return None
        types = schema.get("type")
        types = types if isinstance(types, list) else [types]
        for k in ("integer", "number", "boolean"):
            if k in types:
                return k
        return None

    # -- parameters -----------------------------------------------------------
    def parameters(self) -> None:
        op = self.space.node(self.loc)
        item_loc = Loc(self.loc.file, self.loc.pointer.rsplit("/", 1)[0])
        merged: Dict[Tuple[str, str], Tuple[dict, Loc]] = {}
        order: List[Tuple[str, str]] = []
        for owner, owner_loc in ((self.space.node(item_loc), item_loc), (op, self.loc)):
            plist = owner.get("parameters") if isinstance(owner, dict) else None
            if not isinstance(plist, list):
                continue
            for i, raw in enumerate(plist):
                try:
                    p, ploc = self.deref(raw, owner_loc.child("parameters", i))
                except RefError as exc:
                    self.problem("GW070", str(exc), owner_loc.child("parameters", i))
                    continue
                if not isinstance(p, dict) or not isinstance(p.get("name"), str) or p.get("in") not in DEFAULT_STYLE:
                    continue
                key = (p["in"], p["name"] if p["in"] != "header" else p["name"].lower())
                if key not in merged:
                    order.append(key)
                merged[key] = (p, ploc)
        for key in order:
            self.parameter(*merged[key])

    def parameter(self, p: dict, ploc: Loc) -> None:
        where, name = p["in"], p["name"]
        if where == "header" and name.lower() in IGNORED_HEADERS:
            return
        schema = p.get("schema")
        sloc = ploc.child("schema")
        if schema is None:
            content = p.get("content")
            if isinstance(content, dict) and content:
                self.problem("GW075", f"parameter '{name}': `content` parameters are not validated; use `schema`", ploc.child("content"), WARNING)
            if not p.get("required"):
                return
        style = p.get("style", DEFAULT_STYLE[where])
        explode = p.get("explode", style == "form")
        is_array, kind, _, _ = self.kind_of(schema, sloc) if schema is not None else (False, None, None, None)
        if is_array and style not in ARRAY_STYLES:
            self.problem("GW075", f"parameter '{name}': style {style!r} is not supported for arrays; it is validated as a string", ploc, WARNING)
            is_array = False
        if schema is not None:
            s2, _ = self.deref(schema, sloc)
            if isinstance(s2, dict) and (s2.get("type") == "object" or (isinstance(s2.get("type"), list) and "object" in s2["type"])):
                self.problem("GW075", f"parameter '{name}': object parameters are not validated", ploc, WARNING)
                schema = None
        spec = {"array": is_array, "style": style, "explode": bool(explode)}
        if kind:
            spec["kind"] = kind
        if where == "path":
            if name not in self.t.path_params:
                self.problem("GW075", f"path parameter '{name}' does not appear in the path template", ploc, WARNING)
                return
            spec["index"] = self.t.path_params.index(name) + 1
        required = bool(p.get("required")) or where == "path"
        if schema is not None and not is_array and self.accepts_any_string(schema, sloc) and (where == "path" or not required):
            # Nothing to check: a path segment is always present and always a
            # string, and an optional parameter with such a schema always passes.
            return
        tbl = self.code.table(_lua_table(spec))
        L = self.code.lines
        L.append(f"P[1] = {lua_str(where)}; P[2] = {lua_str(name)}")
        L.append("do")
        L.append(f"    local x = param({lua_str(where)}, {lua_str(name)}, {tbl}, caps)")
        L.append("    if x == nil then")
        if required:
            L.append(f"        if err(2, \"required\", {lua_str(f'missing required {where} parameter {name!r}')}) then return end")
        if schema is not None:
            fn = self.comp.fn(sloc)
            L.append(f"    elseif not F[{fn}](x, 2, true, nil) then")
            L.append("        if S.full then return end")
        L.append("    end")
        L.append("end")

    # -- body -------------------------------------------------------------------
    def body(self) -> None:
        op = self.space.node(self.loc)
        rb = op.get("requestBody") if isinstance(op, dict) else None
        if rb is None:
            return
        try:
            rb, rloc = self.deref(rb, self.loc.child("requestBody"))
        except RefError as exc:
            self.problem("GW070", str(exc), self.loc.child("requestBody"))
            return
        content = rb.get("content") if isinstance(rb, dict) else None
        if not isinstance(content, dict):
            return
        media: List[str] = []
        for mt in sorted(content):
            entry = content[mt]
            mloc = rloc.child("content", mt)
            key = mt.split(";")[0].strip().lower()
            schema = entry.get("schema") if isinstance(entry, dict) else None
            sloc = mloc.child("schema")
            if schema is None:
                media.append(f"[{lua_str(key)}] = {{}}")
            elif is_json_media(key):
                media.append(f"[{lua_str(key)}] = {{ fn = F[{self.comp.fn(sloc)}] }}")
            elif key == FORM:
                fields = self.form_fields(schema, sloc)
                media.append(f"[{lua_str(key)}] = {{ form = true, fn = F[{self.comp.fn(sloc)}], fields = {fields} }}")
            else:
                if key.startswith(("multipart/",)) or "json" in key or "form" in key:
                    self.problem("GW076", f"request bodies of type {key} are not validated (only JSON and form bodies are)", mloc, WARNING)
                media.append(f"[{lua_str(key)}] = {{}}")
        accepts = ", ".join(sorted(content))
        spec = "{ required = %s, accepts = %s, d4 = %s, media = { %s } }" % (
            "true" if rb.get("required") is True else "false",
            lua_str(accepts),
            "true" if self.t.dialect == "oas30" else "false",
            ", ".join(media),
        )
        self.code.lines.append(f"return body({self.code.table(spec)})")

    def form_fields(self, schema: Any, loc: Loc) -> str:
        try:
            schema, loc = self.deref(schema, loc)
        except RefError:
            return "{}"
        props = schema.get("properties") if isinstance(schema, dict) else None
        if not isinstance(props, dict):
            return "{}"
        parts = []
        for name in sorted(props):
            is_array, kind, _, _ = self.kind_of(props[name], loc.child("properties", name))
            spec = {"array": is_array, "style": "form", "explode": True}
            if kind:
                spec["kind"] = kind
            parts.append(f"[{lua_str(name)}] = {_lua_table(spec)}")
        return "{ " + ", ".join(parts) + " }"


def _lua_table(spec: Dict[str, Any]) -> str:
    parts = []
    for k in sorted(spec):
        v = spec[k]
        if isinstance(v, bool):
            text = "true" if v else "false"
        elif isinstance(v, int):
            text = str(v)
        else:
            text = lua_str(str(v))
        parts.append(f"{k} = {text}")
    return "{ " + ", ".join(parts) + " }"


def build_operation(comp: SchemaCompiler, space: SchemaSpace, loc: Loc, target) -> Tuple[OperationCode, List[OpProblem]]:
    op = _Op(comp, space, loc, target)
    try:
        node = space.node(loc)
    except (KeyError, IndexError, ValueError, TypeError):
        op.problem("GW070", f"operation {target.operation_id}: no object at {loc.pointer}", loc)
        return op.code, op.problems
    if not isinstance(node, dict):
        return op.code, op.problems
    if target.parameters:
        op.parameters()
    if target.body:
        op.body()
    return op.code, op.problems
