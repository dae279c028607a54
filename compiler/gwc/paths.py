"""OpenAPI path templates: parsing, precedence and overlap.

A template is split on `/` into segments. A segment is a literal, a single
parameter (`{id}`), a mixed segment of literals and parameters
(`{sid}.json`, `{base}...{head}`) or, as the last segment only, a greedy
parameter (`{proxy+}`) that matches one or more whole segments.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple, Union
from urllib.parse import unquote

LITERAL, MIXED, PARAM, GREEDY = "literal", "mixed", "param", "greedy"
# Higher ranks win when two templates are compared segment by segment.
KIND_RANK = {LITERAL: 3, MIXED: 2, PARAM: 1, GREEDY: 0}

_PARAM_NAME = re.compile(r"^[A-Za-z0-9_.\-\[\]$]{1,128}$")
_TOKEN = re.compile(r"\{([^{}/]*)\}")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class Param:
    name: str


Part = Union[str, Param]


@dataclass(frozen=True)
class Segment:
    kind: str
    parts: Tuple[Part, ...]

    @property
    def literal_chars(self) -> int:
        return sum(len(p) for p in self.parts if isinstance(p, str))

    @property
    def params(self) -> Tuple[str, ...]:
        return tuple(p.name for p in self.parts if isinstance(p, Param))

    @property
    def text(self) -> str:
        return "".join(p if isinstance(p, str) else "{" + p.name + ("+" if self.kind == GREEDY else "") + "}" for p in self.parts)

    def rank(self) -> Tuple[int, int]:
        return (KIND_RANK[self.kind], self.literal_chars)

    def glob(self) -> Tuple[str, ...]:
        """The segment as a glob: literal characters and `*` for a parameter (one or more characters)."""
        out = []
        for p in self.parts:
            if isinstance(p, str):
                out.extend(p)
            else:
                out.append(None)  # type: ignore[arg-type]
        return tuple(out)


@dataclass(frozen=True)
class PathTemplate:
    text: str  # the path key without its fragment: what a request can match
    segments: Tuple[Segment, ...]
    fragment: Optional[str] = None  # after '#' in the path key, which never reaches a server
    query: Optional[str] = None  # after '?' in the path key (`/submissions?v=2`)

    @property
    def key(self) -> str:
        """The path key as the description spells it."""
        key = self.text if self.query is None else f"{self.text}?{self.query}"
        return key if self.fragment is None else f"{key}#{self.fragment}"

    @property
    def params(self) -> Tuple[str, ...]:
        out = []
        for seg in self.segments:
            out.extend(seg.params)
        return tuple(out)

    @property
    def greedy(self) -> bool:
        return bool(self.segments) and self.segments[-1].kind == GREEDY

    @property
    def concrete(self) -> bool:
        return all(s.kind == LITERAL for s in self.segments)

    def precedence(self) -> Tuple:
        """Sort key: smaller sorts first and wins. Non-greedy beats greedy, then left-to-right ranks."""
        ranks = tuple((-k, -n) for k, n in (s.rank() for s in self.segments))
        return (1 if self.greedy else 0, ranks)

    def shape(self) -> str:
        return "/" + "/".join(
            "".join(p if isinstance(p, str) else "{}" for p in s.parts) + ("+" if s.kind == GREEDY else "") for s in self.segments
        )


def parse_template(key: str) -> PathTemplate:
    """Parse a path key. Converted descriptions keep operations apart with a
    `#fragment` (`/#X-Amz-Target=Svc.Op`) or a query (`/submissions?v=2`);
    both are kept aside, not matched as path."""
    if not isinstance(key, str) or not key.startswith("/"):
        raise TemplateError("a path must start with '/'")
    text, hash_sign, fragment = key.partition("#")
    text, question_mark, query = text.partition("?")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in key):
        raise TemplateError("a path may not contain spaces or control characters")
    raw_segments = text[1:].split("/")
    segments = []
    seen_params = set()
    for index, raw in enumerate(raw_segments):
        last = index == len(raw_segments) - 1
        if raw == "" and not last:
            raise TemplateError("a path may not contain an empty segment ('//')")
        if raw in (".", ".."):
            raise TemplateError("a path may not contain '.' or '..' segments")
        parts = []
        pos = 0
        greedy = False
        for m in _TOKEN.finditer(raw):
            if m.start() > pos:
                parts.append(unquote(raw[pos : m.start()]))
            elif parts and isinstance(parts[-1], Param):
                raise TemplateError(f"parameters {{{parts[-1].name}}} and {{{m.group(1)}}} are adjacent, so the split between them is ambiguous")
            name = m.group(1)
            if name.endswith("+"):
                name = name[:-1]
                greedy = True
            if not _PARAM_NAME.match(name):
                raise TemplateError(f"invalid parameter name {{{m.group(1)}}}")
            if name in seen_params:
                raise TemplateError(f"parameter {{{name}}} appears twice")
            seen_params.add(name)
            parts.append(Param(name))
            pos = m.end()
        rest = raw[pos:]
        if "{" in rest or "}" in rest or any(isinstance(p, str) and ("{" in p or "}" in p) for p in parts):
            raise TemplateError("unbalanced '{' or '}'")
        if rest:
            parts.append(unquote(rest))
        if greedy:
            if not last or len(parts) != 1:
                raise TemplateError("a greedy parameter {name+} must be the whole last segment")
            kind = GREEDY
        elif not any(isinstance(p, Param) for p in parts):
            kind = LITERAL
            if not parts:
                parts = [""]
        elif len(parts) == 1:
            kind = PARAM
        else:
            kind = MIXED
        segments.append(Segment(kind, tuple(parts)))
    return PathTemplate(text, tuple(segments), fragment if hash_sign else None, query if question_mark else None)


_SELECTOR_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_SELECTOR_VALUE = re.compile(r"^[A-Za-z0-9_.:\-]{1,256}$")


def fragment_items(fragment: str) -> Optional[Tuple[Tuple[str, Optional[str]], ...]]:
    """A fragment such as `X-Amz-Target=Svc.Op`, `op=APPEND` or `analytics&id` as
    (name, value or None for "present") pairs, or None if it is not of that form.
    The character sets keep names and values safe for nginx strings and JSON."""
    items = []
    for item in fragment.split("&"):
        name, eq, value = item.partition("=")
        if eq and _TOKEN.fullmatch(value):
            eq = ""  # `city={city}`: any value, so the parameter only has to be present
        if not _SELECTOR_NAME.match(name) or (eq and not _SELECTOR_VALUE.match(value)):
            return None
        items.append((name, value if eq else None))
    return tuple(items)


def _globs_intersect(a: Tuple, b: Tuple) -> bool:
    """Whether some non-empty string matches both globs (None = one or more characters)."""

    # Expand each wildcard into ANY followed by ANY* so both sides use the same alphabet.
    def expand(g):
        out = []
        for c in g:
            if c is None:
                out += ["ANY", "STAR"]
            else:
                out.append(c)
        return tuple(out)

    ea, eb = expand(a), expand(b)

    @lru_cache(maxsize=None)
    def go(i: int, j: int) -> bool:
        if i == len(ea) and j == len(eb):
            return True
        if i < len(ea) and ea[i] == "STAR":
            if go(i + 1, j):
                return True
            if j < len(eb) and eb[j] != "STAR" and go(i, j + 1):
                return True
            if j < len(eb) and eb[j] == "STAR" and go(i, j + 1):
                return True
            return False
        if j < len(eb) and eb[j] == "STAR":
            if go(i, j + 1):
                return True
            return i < len(ea) and go(i + 1, j)
        if i == len(ea) or j == len(eb):
            return False
        x, y = ea[i], eb[j]
        if x == "ANY" or y == "ANY" or x == y:
            return go(i + 1, j + 1)
        return False

    return go(0, 0)


def segments_overlap(a: Segment, b: Segment) -> bool:
    if a.kind == GREEDY or b.kind == GREEDY:
        return True
    if a.kind == LITERAL and b.kind == LITERAL:
        return a.parts == b.parts
    if a.parts == ("",) or b.parts == ("",):
        return a.parts == b.parts  # an empty (trailing) segment matches only itself
    return _globs_intersect(a.glob(), b.glob())


def templates_overlap(a: PathTemplate, b: PathTemplate) -> bool:
    """Whether one request path could match both templates."""
    sa, sb = a.segments, b.segments
    if a.greedy or b.greedy:
        n = min(len(sa), len(sb))
        if not a.greedy and len(sa) < len(sb):
            return False
        if not b.greedy and len(sb) < len(sa):
            return False
        return all(segments_overlap(x, y) for x, y in zip(sa[:n], sb[:n]))
    if len(sa) != len(sb):
        return False
    return all(segments_overlap(x, y) for x, y in zip(sa, sb))


def lua_pattern(segment: Segment) -> str:
    """A Lua pattern, anchored at both ends, that captures each parameter of a mixed segment."""
    out = ["^"]
    for p in segment.parts:
        if isinstance(p, Param):
            out.append("(.+)")
        else:
            out.append("".join("%" + c if not c.isalnum() else c for c in p))
    out.append("$")
    return "".join(out)


def substitute_ok(rewrite: str, params: Tuple[str, ...]) -> Optional[str]:
    """Return the first parameter the rewrite template uses that the path lacks."""
    for m in _TOKEN.finditer(rewrite):
        if m.group(1) not in params:
            return m.group(1)
    return None
