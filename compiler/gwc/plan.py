"""Stage 4: route precedence, ambiguity, and the dispatch data for the runtime.

Routing runs in Lua over a trie of path segments that is built from the data
this stage produces, so dispatch cost does not grow with the number of
routes. Each operation then jumps to an internal exact-match location, which
nginx finds in its static location tree.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .diagnostics import Diagnostic
from .model import Gateway, Operation, Upstream
from .paths import GREEDY, LITERAL, MIXED, PARAM, PathTemplate, lua_pattern, templates_overlap

METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


@dataclass(frozen=True)
class Location:
    """One internal location. Operations whose location settings are equal share one."""

    ident: str
    kind: str  # "proxy" or "mock"
    upstream: Optional[Upstream]


@dataclass(frozen=True)
class Route:
    template: PathTemplate
    methods: Tuple[Tuple[str, int], ...]  # (METHOD, operation index)

    @property
    def allow(self) -> str:
        methods = {m for m, _ in self.methods}
        if "GET" in methods:
            methods.add("HEAD")
        return ", ".join(m for m in METHOD_ORDER if m in methods)


@dataclass(frozen=True)
class Plan:
    gateway: Gateway
    locations: Tuple[Location, ...]
    operation_locations: Tuple[str, ...]
    routes: Tuple[Route, ...]

    def route_data(self) -> dict:
        """JSON-ready dispatch data consumed by lua/gwc/router.lua."""
        ops = []
        for op, loc in zip(self.gateway.operations, self.operation_locations):
            entry = {"id": op.operation_id, "loc": loc}
            if op.rewrite is not None:
                entry["rewrite"] = _rewrite_parts(op)
            if op.mock is not None:
                entry["mock"] = {
                    "status": op.mock.status,
                    "headers": [[k, v] for k, v in op.mock.headers],
                    "content_type": op.mock.content_type,
                    "body": op.mock.body,
                }
            ops.append(entry)
        routes = []
        for r in self.routes:
            routes.append(
                {
                    "path": r.template.text,
                    "params": list(r.template.params),
                    "methods": {m: i + 1 for m, i in r.methods},
                    "allow": r.allow,
                }
            )
        return {
            "base_path": self.gateway.base_path,
            "encoded_slashes": self.gateway.routing.encoded_slashes,
            "trailing_slash": self.gateway.routing.trailing_slash,
            "operations": ops,
            "routes": routes,
            "tree": _build_tree(self.routes),
        }


def _rewrite_parts(op: Operation) -> list:
    """The rewrite template as literal strings and 1-based capture indexes."""
    params = op.template.params
    parts: list = []
    pos = 0
    text = op.rewrite or ""
    for m in re.finditer(r"\{([^{}]*)\}", text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        parts.append(params.index(m.group(1)) + 1)
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return parts


def _new_node() -> dict:
    return {}


def _build_tree(routes: Tuple[Route, ...]) -> dict:
    """A trie over segments. Keys: lit (map), mixed (list, most specific first), param, greedy, route."""
    root: dict = _new_node()
    for index, route in enumerate(routes, start=1):
        node = root
        for seg in route.template.segments:
            if seg.kind == LITERAL:
                node = node.setdefault("lit", {}).setdefault(seg.parts[0], _new_node())
            elif seg.kind == PARAM:
                node = node.setdefault("param", _new_node())
            elif seg.kind == MIXED:
                pattern = lua_pattern(seg)
                mixed = node.setdefault("mixed", [])
                found = next((m for m in mixed if m["pattern"] == pattern), None)
                if found is None:
                    found = {"pattern": pattern, "captures": len(seg.params), "rank": seg.literal_chars, "node": _new_node()}
                    mixed.append(found)
                node = found["node"]
            elif seg.kind == GREEDY:
                node["greedy"] = index
                node = None
                break
        if node is not None:
            node["route"] = index
    _sort_mixed(root)
    return root


def _sort_mixed(node: dict) -> None:
    if "mixed" in node:
        node["mixed"].sort(key=lambda m: (-m["rank"], m["pattern"]))
        for m in node["mixed"]:
            del m["rank"]
            _sort_mixed(m["node"])
    for child in node.get("lit", {}).values():
        _sort_mixed(child)
    if "param" in node:
        _sort_mixed(node["param"])


def plan(gateway: Gateway) -> Tuple[Optional[Plan], List[Diagnostic]]:
    diags: List[Diagnostic] = []
    by_path: Dict[str, List[int]] = defaultdict(list)
    for i, op in enumerate(gateway.operations):
        by_path[op.template.text].append(i)

    routes = []
    for text, indexes in by_path.items():
        template = gateway.operations[indexes[0]].template
        methods = tuple(sorted(((gateway.operations[i].method, i) for i in indexes), key=lambda mi: METHOD_ORDER.index(mi[0]) if mi[0] in METHOD_ORDER else 99))
        routes.append(Route(template, methods))
    routes.sort(key=lambda r: (r.template.precedence(), r.template.text))

    # Two routes of equal precedence that can match one request would make the
    # winner depend on declaration order, so they are an error.
    # Equal precedence means equal segment kinds, so literal segments must also
    # be equal text to overlap: bucketing on them keeps this near-linear.
    groups: Dict[tuple, List[Route]] = defaultdict(list)
    for r in routes:
        literals = tuple(s.parts[0] if s.kind == LITERAL else None for s in r.template.segments)
        groups[(r.template.precedence(), literals)].append(r)
    for group in groups.values():
        for a_i in range(len(group)):
            for b_i in range(a_i + 1, len(group)):
                a, b = group[a_i], group[b_i]
                if templates_overlap(a.template, b.template):
                    op_a = gateway.operations[a.methods[0][1]]
                    diags.append(
                        Diagnostic(
                            "GW031",
                            f"ambiguous routes: {a.template.text!r} and {b.template.text!r} can match the same request "
                            "with equal precedence; make one of them more specific",
                            op_a.file,
                            pointer=op_a.pointer.rsplit("/", 1)[0],
                        )
                    )
    if diags:
        return None, diags

    locations: List[Location] = []
    index_of: Dict[tuple, str] = {}
    op_locs = []
    for op in gateway.operations:
        key = ("mock", None) if op.mock is not None else ("proxy", op.upstream)
        if key not in index_of:
            ident = str(len(locations) + 1)
            index_of[key] = ident
            up = gateway.upstream(op.upstream) if op.upstream else None
            locations.append(Location(ident, key[0], up))
        op_locs.append(index_of[key])
    return Plan(gateway, tuple(locations), tuple(op_locs), tuple(routes)), diags
