"""Several operations on one path and method: which request reaches which.

Converted descriptions keep such operations apart with a `#fragment` or
`?query` in the path key (`#X-Amz-Target=Svc.Op`, `?op=APPEND`) or by request
body media type. The build turns that into conditions the router checks in
order, and refuses (GW031, GW082) what no request could tell apart.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .diagnostics import Diagnostic
from .model import Gateway, Operation
from .paths import fragment_items


@dataclass(frozen=True)
class Choice:
    """One operation of several on a path and method, chosen when every condition holds."""

    op: int
    conditions: Tuple[Tuple[str, str, Optional[str]], ...]  # (header|query, name, value; None: present)
    media: Tuple[str, ...] = ()  # or: request Content-Types (`type/*` allowed) that select the operation
    # 1-based positions of the choices one request can meet together with this
    # one, neither extending the other: meeting both is a 400, not a guess.
    rivals: Tuple[int, ...] = ()


def route_diag(code: str, message: str, op: Operation, severity: str = "error") -> Diagnostic:
    return Diagnostic(code, message, op.file, pointer=op.pointer.rsplit("/", 1)[0], severity=severity)


def describe(op: Operation) -> str:
    return f"{op.method} {op.template.key} (operationId {op.operation_id!r})"


def _conditions(op: Operation) -> Optional[Tuple[Tuple[str, str, Optional[str]], ...]]:
    """The operation's fragment as conditions on header or query parameters it
    declares, or None when the fragment names anything else."""
    out = []
    if op.template.query is not None:
        # The query of a path key is part of the URL clients send: no declaration needed.
        items = fragment_items(op.template.query)
        if items is None:
            return None
        out.extend(("query", name, value) for name, value in items)
    if op.template.fragment is None:
        return tuple(sorted(out, key=lambda c: (c[0], c[1], c[2] or "")))
    items = fragment_items(op.template.fragment)
    if items is None:
        return None
    headers = {name.lower(): name for kind, name in op.selectors if kind == "header"}
    queries = {name for kind, name in op.selectors if kind == "query"}
    for name, value in items:
        if name.lower() in headers:
            out.append(("header", headers[name.lower()], value))
        elif name in queries:
            out.append(("query", name, value))
        else:
            return None
    return tuple(sorted(out, key=lambda c: (c[0], c[1], c[2] or "")))


def _exclusive(a: tuple, b: tuple) -> bool:
    """Whether no request can meet both sets of conditions (one parameter, two values)."""
    values_a = {(k, n.lower() if k == "header" else n): v for k, n, v in a if v is not None}
    return any(v is not None and values_a.get((k, n.lower() if k == "header" else n), v) != v for k, n, v in b)


NO_BODY = ""  # the media "type" of a request without a Content-Type
_MEDIA = re.compile(r"^[a-z0-9][a-z0-9.+_-]*/(\*|[a-z0-9][a-z0-9.+_-]*)$")


def _by_media(candidates: List[int], ops: List[Operation]) -> Optional[Tuple[Choice, ...]]:
    """Choices by request Content-Type (Azure's `#overload=stream`: JSON beside
    octet-stream), when every operation takes a body and no media type, `type/*`
    included, is accepted by two of them."""
    owner: Dict[str, int] = {}
    if sum(not op.body_media_types for op in ops) > 1:
        return None
    for k, op in enumerate(ops):
        if not op.body_media_types:
            owner[NO_BODY] = k  # one operation without a body: requests without a Content-Type
            continue
        for m in op.body_media_types:
            if not _MEDIA.match(m) or m in owner:
                return None
            owner[m] = k
    for m, k in owner.items():
        major = m.split("/", 1)[0] + "/*"
        if m != NO_BODY and owner.get(major, k) != k:
            return None
    return tuple(Choice(i, (), op.body_media_types or (NO_BODY,)) for i, op in zip(candidates, ops))


def select(gateway: Gateway, method: str, candidates: List[int], diags: List[Diagnostic]):
    """Choices and fallback for several operations on one path and method, or
    None (with an error) when no declared header or query parameter safely
    tells them apart."""
    ops = [gateway.operations[i] for i in candidates]
    conds = [_conditions(op) for op in ops]
    plain = [i for i, c in zip(candidates, conds) if c == ()]
    if len(plain) > 1:
        a, b = gateway.operations[plain[0]], gateway.operations[plain[1]]
        diags.append(route_diag(
            "GW031", f"ambiguous routes: {describe(a)} and {describe(b)} match the same requests; "
            "give them different paths, or methods", b))
        return None
    if None in conds:
        by_media = _by_media(candidates, ops)
        if by_media is not None:
            return by_media, -1
    for op, c in zip(ops, conds):
        if c is None:
            other = next(o for o in ops if o is not op)
            diags.append(route_diag(
                "GW082", f"{describe(op)} and {describe(other)} share a path and method, and the fragment "
                f"{op.template.fragment or op.template.query!r} does not name header or query parameters the operation declares "
                "(such as 'X-Amz-Target=Service.Op' or 'op=APPEND'), nor do their request bodies take "
                "different media types, so no request can be routed to one of them safely; give them different "
                "paths or declare the parameter", op))
            return None
    for x in range(len(ops)):
        for y in range(x + 1, len(ops)):
            if conds[x] and set(conds[x]) == set(conds[y]):
                diags.append(route_diag(
                    "GW082", f"{describe(ops[x])} and {describe(ops[y])} share a path and method, and their "
                    "fragments ask for the same parameters, so no request tells them apart", ops[y]))
                return None
    # More conditions first, so a fragment that extends another wins over it.
    ranked = sorted((c, k, i) for k, (i, c) in enumerate(zip(candidates, conds)) if c)
    ranked.sort(key=lambda t: (-len(t[0]), t[1]))

    def rivals(a: tuple) -> Tuple[int, ...]:
        return tuple(
            q for q, (b, _, _) in enumerate(ranked, start=1)
            if b is not a and not _exclusive(a, b) and not set(a) < set(b) and not set(b) < set(a)
        )

    choices = tuple(Choice(i, c, rivals=rivals(c)) for c, _, i in ranked)
    return choices, plain[0] if plain else -1


def _selector(kind: str, name: str) -> list:
    """Where the router reads a condition: a header through its nginx variable,
    a query parameter (which `$arg_` cannot see without a `=`) by name."""
    return ["h", "http_" + name.lower().replace("-", "_")] if kind == "header" else ["q", name]


def choice_data(c: Choice) -> dict:
    if c.media:
        return {"op": c.op + 1, "media": {m: True for m in c.media}}
    out = {"op": c.op + 1, "when": [_selector(k, n) + [v if v is not None else True] for k, n, v in c.conditions]}
    if c.rivals:
        out["rivals"] = list(c.rivals)
    return out


def expects(choices: Tuple[Choice, ...]) -> str:
    """What the client must send, for the 400 problem: built from names the spec vetted as safe."""
    if choices and choices[0].media:
        types = [m for c in choices for m in c.media if m != NO_BODY]
        none = any(NO_BODY in c.media for c in choices)
        return "a Content-Type of " + ", ".join(types) + (", or none" if none else "")
    seen: Dict[tuple, str] = {}
    for c in choices:
        for kind, name, _ in c.conditions:
            key = (kind, name.lower() if kind == "header" else name)
            seen.setdefault(key, f"the {name} header" if kind == "header" else f"the query parameter {name}")
    return " or ".join(seen.values())
