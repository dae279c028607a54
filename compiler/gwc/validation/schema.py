"""JSON Schema -> straight-line Lua, one function per schema location.

Every generated function has the signature `(v, d, c, ev)`:
  v   the instance, in the runtime representation (see lua/gwc/json_decode.lua:
      objects and arrays carry the OBJ/ARR metatables, null is NULL);
  d   the depth of v; P[1..d] holds the pointer tokens leading to it, so a
      pointer string is only built when an error is reported;
  c   collect errors (false inside anyOf/oneOf/not/if/contains probes, where
      only validity matters and the first failure returns);
  ev  nil, or the table of evaluated properties/items that
      unevaluatedProperties/unevaluatedItems of an enclosing schema needs.
It returns true when v is valid. Recursion only happens through child
instances (whose depth the decoder bounds) because a cycle of in-place
applicators is refused at build time (GW074).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from ..diagnostics import ERROR
from ..load import split_pointer
from .keywords import Fn
from .lua_text import lua_value
from .shapes import shape_error
from .space import Loc, RefError, SchemaSpace, subschemas

OAS30 = "oas30"
MAX_FUNCTIONS = 50_000
OAS31 = "oas31"

@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    loc: Loc
    severity: str = ERROR


class SchemaCompiler:
    """Accumulates generated functions for every schema reached."""

    def __init__(self, space: SchemaSpace, dialect: str, reject_read_only: bool = False, openapi: bool = True):
        self.space = space
        self.dialect = dialect
        self.d4 = dialect == OAS30
        self.reject_read_only = reject_read_only
        self.openapi = openapi  # nullable / discriminator are OpenAPI words
        # (location, dynamic scope) -> function number. The dynamic scope is
        # only non-empty when schemas declare $dynamicAnchor; each distinct
        # scope gets its own copy of a function, so $dynamicRef is resolved
        # at build time too.
        self.index: Dict[Tuple[Loc, Tuple], int] = {}
        self._resource: Dict[Loc, Loc] = {}
        self._danchors: Dict[Loc, Tuple] = {}
        self._too_big = False
        self.code: Dict[int, str] = {}
        self.queue: List[Loc] = []
        self.consts: List[str] = []
        self._const_ix: Dict[str, int] = {}
        self.problems: List[Problem] = []
        self.inplace: Dict[int, List[int]] = {}  # in-place applicator edges, for GW074

    # -- bookkeeping -------------------------------------------------------
    def resource_of(self, loc: Loc) -> Loc:
        if loc not in self._resource:
            node = self.space.files[loc.file]
            best = Loc(loc.file, "")
            cur = Loc(loc.file, "")
            for t in split_pointer(loc.pointer):
                node = node[int(t)] if isinstance(node, list) else node.get(t) if isinstance(node, dict) else None
                cur = cur.child(t)
                if isinstance(node, dict) and isinstance(node.get(self.space.id_key), str) \
                        and not node[self.space.id_key].startswith("#"):
                    best = cur
            self._resource[loc] = best
        return self._resource[loc]

    def dynamic_anchors(self, resource: Loc) -> Tuple:
        if resource not in self._danchors:
            found = []
            stack = [(self.space.node(resource), resource, True)]
            while stack:
                node, loc, top = stack.pop()
                if not isinstance(node, dict):
                    continue
                if not top and isinstance(node.get("$id"), str):
                    continue  # another resource
                if isinstance(node.get("$dynamicAnchor"), str):
                    found.append((node["$dynamicAnchor"], loc))
                for tokens, sub in subschemas(node):
                    stack.append((sub, loc.child(*tokens), False))
            self._danchors[resource] = tuple(sorted(found, key=lambda x: (x[0], x[1].pointer)))
        return self._danchors[resource]

    def enter(self, ctx: Tuple, loc: Loc) -> Tuple:
        """The dynamic scope after entering the resource that holds loc."""
        if self.d4:
            return ()
        try:
            anchors = self.dynamic_anchors(self.resource_of(loc))
        except (KeyError, IndexError, ValueError, TypeError):
            return ctx
        names = {n for n, _ in ctx}
        extra = tuple((n, l) for n, l in anchors if n not in names)
        return ctx + extra if extra else ctx

    def dynamic_target(self, ref: str, at: Loc, ctx: Tuple) -> Loc:
        target = self.space.resolve(ref, at)
        frag = ref.partition("#")[2]
        if frag and not frag.startswith("/"):
            node = self.space.node(target)
            if isinstance(node, dict) and node.get("$dynamicAnchor") == frag:
                for name, loc in ctx:
                    if name == frag:
                        return loc
        return target

    def fn(self, loc: Loc, ctx: Tuple = ()) -> int:
        ctx = self.enter(ctx, loc)
        # A schema that is only a $ref shares its target's function.
        seen = set()
        while loc not in seen:
            seen.add(loc)
            try:
                node = self.space.node(loc)
            except (KeyError, IndexError, ValueError, TypeError):
                break
            if not (isinstance(node, dict) and isinstance(node.get("$ref"), str) and (self.d4 or len(node) == 1)):
                break
            try:
                loc = self.space.resolve(node["$ref"], loc)
            except RefError:
                break  # the function body reports it
            ctx = self.enter(ctx, loc)
        key = (loc, ctx)
        if key not in self.index:
            if len(self.index) >= MAX_FUNCTIONS:
                # Dynamic scopes multiply functions; a pathological schema stops here.
                if not self._too_big:
                    self._too_big = True
                    self.problem("GW070", f"schema needs more than {MAX_FUNCTIONS} validator functions; simplify it, or set x-gateway: {{validate: {{body: false}}}} on this operation", loc)
                key = (Loc(loc.file, loc.pointer), ())
                if key not in self.index:
                    return 0
            else:
                self.index[key] = len(self.index) + 1
                self.queue.append(key)
        return self.index[key]

    def const(self, value: Any) -> str:
        text = lua_value(value)
        if text not in self._const_ix:
            self.consts.append(text)
            self._const_ix[text] = len(self.consts)
        return f"K[{self._const_ix[text]}]"

    def problem(self, code: str, message: str, loc: Loc, severity: str = ERROR) -> None:
        self.problems.append(Problem(code, message, loc, severity))

    def run(self) -> None:
        while self.queue:
            key = self.queue.pop(0)
            ix = self.index[key]
            self.code[ix] = self._function(ix, *key)
        self._check_cycles()

    def _check_cycles(self) -> None:
        # A cycle of in-place applicators never consumes input: refuse it.
        state: Dict[int, int] = {}
        rev = {v: k[0] for k, v in self.index.items()}
        for start in sorted(self.inplace):
            if state.get(start):
                continue
            stack = [(start, iter(self.inplace.get(start, ())))]
            state[start] = 1
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    state[node] = 2
                    stack.pop()
                    continue
                if state.get(nxt) == 1:
                    self.problem("GW074", "schema refers to itself without descending into the instance; validation would never end", rev[nxt])
                    self.code[nxt] = f"F[{nxt}] = function(v, d, c, ev)\n    return false\nend\n"
                    continue
                if not state.get(nxt):
                    state[nxt] = 1
                    stack.append((nxt, iter(self.inplace.get(nxt, ()))))

    def source(self) -> str:
        # F[0] stands for any function beyond MAX_FUNCTIONS: it rejects.
        stub = "F[0] = function() return false end\n" if self._too_big else ""
        return stub + "".join(self.code[i] for i in sorted(self.code))

    # -- one function --------------------------------------------------------
    def _function(self, ix: int, loc: Loc, ctx: Tuple) -> str:
        try:
            schema = self.space.node(loc)
        except (KeyError, IndexError, ValueError, TypeError):
            self.problem("GW070", "schema location does not exist", loc)
            schema = True
        g = Fn(self, ix, loc, ctx)
        try:
            g.body(self._usable(schema, loc))
        except RefError as exc:
            self.problem("GW070", str(exc), loc)
            g = Fn(self, ix, loc, ctx)
            g.lines = ["return false"]
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as exc:
            # A shape the checks above missed: a diagnostic, never a traceback.
            self.problem("GW070", f"schema cannot be compiled ({type(exc).__name__})", loc)
            g = Fn(self, ix, loc, ctx)
            g.lines = ["return false"]
        return g.render()

    def _usable(self, schema: Any, loc: Loc) -> Any:
        """The schema without keywords whose values have the wrong shape (each a GW070)."""
        if not isinstance(schema, dict):
            return schema
        out = {}
        for kw, v in schema.items():
            why = shape_error(kw, v, self.d4)
            if why:
                self.problem("GW070", f"{kw} {why}", loc.child(kw))
            else:
                out[kw] = v
        return out


