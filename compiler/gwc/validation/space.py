"""Schema locations and $ref resolution across files, $id and $anchor.

A schema location is (file key, JSON pointer). Files come from the loaded
OpenAPI Document (relative-file refs go through Document.resolve) or, for the
conformance suite, from in-memory schemas. $id/$anchor are indexed by walking
only schema keywords, so an "$id" inside an enum or const is not an identifier.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import unquote, urldefrag, urljoin

from ..diagnostics import escape_pointer_token
from ..load import split_pointer


@dataclass(frozen=True)
class Loc:
    file: str
    pointer: str

    def child(self, *tokens) -> "Loc":
        p = self.pointer
        for t in tokens:
            p += "/" + escape_pointer_token(t)
        return Loc(self.file, p)


def join(base: str, ref: str) -> str:
    """urljoin that also copes with URN bases (urljoin ignores them)."""
    if ref.startswith("#"):
        return urldefrag(base)[0] + ref
    if ":" in ref.split("/", 1)[0]:
        return ref  # absolute
    return urljoin(base, ref)


class RefError(Exception):
    """Internal: turned into a GW070 diagnostic by the compiler."""


# Keywords whose value is one schema, a list of schemas, or a map of schemas.
SINGLE = ("additionalItems", "additionalProperties", "items", "not", "contains", "propertyNames",
          "if", "then", "else", "unevaluatedItems", "unevaluatedProperties")
LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies")


def subschemas(node: Any):
    """Yield (tokens, subschema) for the direct subschemas of node."""
    if not isinstance(node, dict):
        return
    for kw in SINGLE:
        v = node.get(kw)
        if isinstance(v, (dict, bool)):
            yield (kw,), v
    for kw in LISTS:
        v = node.get(kw)
        if isinstance(v, list):
            for i, s in enumerate(v):
                yield (kw, i), s
    for kw in MAPS:
        v = node.get(kw)
        if isinstance(v, dict):
            for k, s in v.items():
                if isinstance(s, (dict, bool)):
                    yield (kw, k), s


class SchemaSpace:
    """Files of schemas plus an index of $id and $anchor identifiers."""

    def __init__(self, dialect: str, loader: Optional[Callable[[str, str], Tuple[str, Any]]] = None):
        self.dialect = dialect  # "oas30" (draft 4 rules) or "oas31" (2020-12)
        self.id_key = "id" if dialect == "oas30" else "$id"
        self.files: Dict[str, Any] = {}
        self.file_uri: Dict[str, str] = {}
        self.ids: Dict[str, Loc] = {}        # absolute URI without fragment -> resource root
        self.anchors: Dict[str, Loc] = {}    # absolute URI with #name -> location
        self._indexed: set = set()
        self._nodes: Dict[Loc, Any] = {}
        # loader(ref_without_fragment, from_file_key) -> (file key, data) for relative files.
        self._loader = loader

    def add_file(self, key: str, data: Any, uri: str) -> None:
        self.files[key] = data
        self._nodes.clear()
        self.file_uri[key] = uri
        self.ids.setdefault(uri, Loc(key, ""))

    def node(self, loc: Loc) -> Any:
        # The compiler asks for most locations several times; the files never change under it.
        try:
            return self._nodes[loc]
        except KeyError:
            pass
        node = self.files[loc.file]
        for token in split_pointer(loc.pointer):
            if isinstance(node, list):
                node = node[int(token)]
            elif isinstance(node, dict):
                node = node[token]
            else:
                raise KeyError(token)
        self._nodes[loc] = node
        return node

    def base_uri(self, loc: Loc) -> str:
        """The base URI in effect at loc, following $id on the way down."""
        base = self.file_uri[loc.file]
        node = self.files[loc.file]
        tokens = split_pointer(loc.pointer)
        for i in range(len(tokens) + 1):
            # draft 4: an "id" next to "$ref" is ignored, like every sibling of $ref.
            if isinstance(node, dict) and not (self.dialect == "oas30" and "$ref" in node):
                ident = node.get(self.id_key)
                if isinstance(ident, str) and not ident.startswith("#"):
                    base = join(base, ident)
            if i == len(tokens):
                break
            t = tokens[i]
            if isinstance(node, list) and t.isdigit() and int(t) < len(node):
                node = node[int(t)]
            elif isinstance(node, dict):
                node = node.get(t)
            else:
                break
        return urldefrag(base)[0]

    def index(self, root: Loc) -> None:
        """Index $id/$anchor below root (walking schema keywords only)."""
        if root in self._indexed:
            return
        self._indexed.add(root)
        try:
            start = self.node(root)
        except (KeyError, IndexError, ValueError):
            return
        stack = [(start, root, self.base_uri(root))]
        seen = set()
        while stack:
            node, loc, base = stack.pop()
            if not isinstance(node, dict) or id(node) in seen:
                continue
            seen.add(id(node))
            ident = node.get(self.id_key) if not (self.dialect == "oas30" and "$ref" in node) else None
            if isinstance(ident, str):
                if ident.startswith("#"):
                    if self.dialect == "oas30":  # draft 4: "id": "#foo" is a plain-name fragment
                        self.anchors.setdefault(join(base, ident), loc)
                else:
                    full = urldefrag(join(base, ident))[0]
                    base = full
                    self.ids.setdefault(full, loc)
            anchor = node.get("$anchor")
            if isinstance(anchor, str) and self.dialect == "oas31":
                self.anchors.setdefault(base + "#" + anchor, loc)
            danchor = node.get("$dynamicAnchor")
            if isinstance(danchor, str) and self.dialect == "oas31":
                self.anchors.setdefault(base + "#" + danchor, loc)
            if "$ref" in node and self.dialect == "oas30":
                continue  # draft 4: siblings of $ref are not schemas
            for tokens, sub in subschemas(node):
                stack.append((sub, loc.child(*tokens), base))

    def resolve(self, ref: str, at: Loc) -> Loc:
        if not isinstance(ref, str):
            raise RefError("$ref must be a string")
        base = self.base_uri(at)
        full = join(base, ref)
        uri, frag = urldefrag(full)
        frag = unquote(frag)
        if uri not in self.ids:
            # Maybe an identifier defined elsewhere in this file, or a relative file.
            self.index(Loc(at.file, ""))
        if uri not in self.ids:
            if self._loader is None or uri.startswith(("http://", "https://", "urn:")):
                raise RefError(f"cannot resolve $ref {ref!r}: remote or unknown resource {uri}")
            key, data = self._loader(ref.partition("#")[0], at.file)
            if key not in self.files:
                self.add_file(key, data, uri)
            self.ids.setdefault(uri, Loc(key, ""))
        root = self.ids[uri]
        if frag == "":
            return root
        if frag.startswith("/"):
            loc = Loc(root.file, root.pointer + frag)
            try:
                self.node(loc)
            except (KeyError, IndexError, ValueError, TypeError):
                raise RefError(f"unresolvable $ref {ref!r}: no such target") from None
            return loc
        self.index(root)
        self.index(Loc(root.file, ""))
        key = uri + "#" + frag
        if key in self.anchors:
            return self.anchors[key]
        raise RefError(f"unresolvable $ref {ref!r}: no anchor {frag!r}")
