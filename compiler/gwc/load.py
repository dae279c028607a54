"""Stage 1: read YAML or JSON with source positions and resolve $refs.

The loaded data are plain dicts and lists. Positions are recovered lazily,
because only diagnostics need them: from the YAML node tree, or for JSON by
scanning only the containers along the pointer (composing 5.7 MB of JSON as
YAML takes seconds, and libyaml refuses some valid JSON).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import unquote

import yaml

from .diagnostics import Diagnostic, escape_pointer_token

try:  # the C parser is 5-10x faster on large specs
    _YamlLoader = yaml.CSafeLoader  # type: ignore[attr-defined]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _YamlLoader = yaml.SafeLoader

_scalar_constructor = yaml.constructor.SafeConstructor()


class LoadError(Exception):
    """Raised inside this module only; load() turns it into a diagnostic."""

    def __init__(self, diag: Diagnostic):
        super().__init__(diag.message)
        self.diag = diag


def split_pointer(ptr: str) -> List[str]:
    if ptr in ("", "/"):
        return []
    if not ptr.startswith("/"):
        raise ValueError(f"not a JSON pointer: {ptr!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in ptr[1:].split("/")]


_JSON_WS = re.compile(r"[ \t\n\r]*")
_json_decoder = json.JSONDecoder()


class _JsonLocator:
    """Offsets of JSON values by pointer, each container on a path scanned once."""

    def __init__(self, text: str):
        self.text = text
        self.members: Dict[int, Dict[str, Tuple[int, int]]] = {}
        self.newlines: Optional[List[int]] = None

    def _ws(self, i: int) -> int:
        return _JSON_WS.match(self.text, i).end()

    def _children(self, start: int) -> Dict[str, Tuple[int, int]]:
        """token -> (offset of the key, offset of the value) for the container at start."""
        got = self.members.get(start)
        if got is not None:
            return got
        text, out = self.text, {}
        is_object = text[start] == "{"
        i = self._ws(start + 1)
        n = 0
        while i < len(text) and text[i] not in "}]":
            if is_object:
                token, j = json.decoder.scanstring(text, i + 1)
                j = self._ws(self._ws(j) + 1)  # past the ':'
            else:
                token, j = str(n), i
                n += 1
            out[token] = (i, j)
            _, j = _json_decoder.raw_decode(text, j)
            j = self._ws(j)
            if text[j:j + 1] != ",":
                break
            i = self._ws(j + 1)
        self.members[start] = out
        return out

    def offset(self, tokens: List[str], key: bool) -> int:
        node = best = self._ws(0)
        for i, token in enumerate(tokens):
            if self.text[node:node + 1] not in ("{", "["):
                return best
            found = self._children(node).get(token)
            if found is None:
                return best
            node = found[1]
            best = found[0] if key and i == len(tokens) - 1 else node
        return best

    def line_col(self, offset: int) -> Tuple[int, int]:
        if self.newlines is None:
            self.newlines = [m.start() for m in re.finditer("\n", self.text)]
        line = bisect.bisect_left(self.newlines, offset)
        start = self.newlines[line - 1] + 1 if line else 0
        return line + 1, offset - start + 1


def _node_position(node: yaml.Node) -> Tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


@dataclass
class SourceFile:
    path: Path
    display: str
    text: str
    data: Any
    _root_node: Optional[yaml.Node] = None
    _composed: bool = False
    _json: Optional[_JsonLocator] = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def _node(self) -> Optional[yaml.Node]:
        if not self._composed:
            self._composed = True
            try:
                self._root_node = yaml.compose(self.text, Loader=_YamlLoader)
            except yaml.YAMLError:
                self._root_node = None
        return self._root_node

    def position(self, ptr: Optional[str], key: bool = False) -> Tuple[int, int]:
        """Line and column of the value at ptr (or of its key when key=True).

        Falls back to the deepest ancestor that exists, so a diagnostic about a
        missing member still points at its parent.
        """
        if ptr is None:
            return (1, 1)
        try:
            tokens = split_pointer(ptr)
        except ValueError:
            tokens = []
        if not self._composed and self.path.suffix.lower() == ".json":
            if self._json is None:
                self._json = _JsonLocator(self.text)
            try:
                return self._json.line_col(self._json.offset(tokens, key))
            except (ValueError, IndexError):
                pass  # not plain JSON after all: fall back to the YAML tree
        node = self._node()
        if node is None:
            return (1, 1)
        best = _node_position(node)
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            if isinstance(node, yaml.MappingNode):
                found = None
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == token:
                        found = (k, v)
                        break
                if found is None:
                    return best
                node = found[1]
                best = _node_position(found[0] if (last and key) else found[1])
            elif isinstance(node, yaml.SequenceNode):
                try:
                    node = node.value[int(token)]
                except (ValueError, IndexError):
                    return best
                best = _node_position(node)
            else:
                return best
        return best


def _construct(node: yaml.Node, src_display: str, errors: List[Diagnostic], ptr: str, seen: Dict[int, Any]):
    if isinstance(node, yaml.ScalarNode):
        try:
            value = _scalar_constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            line, col = _node_position(node)
            errors.append(Diagnostic("GW001", f"invalid scalar: {exc}", src_display, line, col, ptr))
            return None
        # YAML 1.1 timestamps are not JSON values; OpenAPI wants strings.
        if not isinstance(value, (str, int, float, bool, type(None))):
            value = node.value
        return value
    if id(node) in seen:
        return seen[id(node)]
    if isinstance(node, yaml.SequenceNode):
        out: List[Any] = []
        seen[id(node)] = out
        for i, item in enumerate(node.value):
            out.append(_construct(item, src_display, errors, f"{ptr}/{i}", seen))
        return out
    if isinstance(node, yaml.MappingNode):
        result: Dict[str, Any] = {}
        seen[id(node)] = result
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged = _construct(value_node, src_display, errors, ptr, seen)
                for m in merged if isinstance(merged, list) else [merged]:
                    if isinstance(m, dict):
                        for k, v in m.items():
                            result.setdefault(k, v)
                continue
            key = _construct(key_node, src_display, errors, ptr, seen)
            if isinstance(key, bool) or key is None:
                key = key_node.value  # `on:`/`yes:` keys stay strings, as JSON would have them
            key = str(key)
            child_ptr = f"{ptr}/{escape_pointer_token(key)}"
            if key in result:
                line, col = _node_position(key_node)
                errors.append(Diagnostic("GW004", f"duplicate key {key!r}", src_display, line, col, child_ptr))
                continue
            result[key] = _construct(value_node, src_display, errors, child_ptr, seen)
        return result
    return None  # pragma: no cover - PyYAML has no other node kinds


# libyaml's composer recurses in C and crashes the interpreter on deeply
# nested flow collections, so depth is checked before it runs. Brackets
# inside strings are counted too; no real spec comes near the limit.
MAX_FLOW_DEPTH = 500
_FLOW_BRACKET = re.compile(r"[\[\]{}]")


def _flow_depth_exceeds(text: str, limit: int) -> bool:
    depth = 0
    for m in _FLOW_BRACKET.finditer(text):
        if m.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        elif depth:
            depth -= 1
    return False


# Aliases share nodes, so a small file can stand for an enormous tree (the
# "billion laughs"); every later stage walks the expanded tree.
MAX_EXPANDED_NODES = 5_000_000
# Without an anchor there is no alias, and nothing to expand.
_ANCHOR = re.compile(r"(?:^|[\s\[{,:-])&[^\s\[\]{},]", re.M)


def _children(node: yaml.Node) -> List[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [c for pair in node.value for c in pair]
    return []


class _RecursiveAlias(ValueError):
    pass


def _expanded_size(root: yaml.Node) -> int:
    """Node count with every alias expanded, computed without expanding.

    Iterative post-order, since documents may be deeply nested; each distinct
    node is sized once, after all of its children. Raises _RecursiveAlias for
    an alias inside its own anchor, which no JSON value can represent."""
    sizes: Dict[int, int] = {}
    open_nodes = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if not children_done:
            open_nodes.add(id(node))
            stack.append((node, True))
            for child in _children(node):
                if id(child) in open_nodes:
                    raise _RecursiveAlias()
                if id(child) not in sizes:
                    stack.append((child, False))
            continue
        open_nodes.discard(id(node))
        total = 1
        for child in _children(node):
            total = min(total + sizes.get(id(child), 1), MAX_EXPANDED_NODES + 1)
        sizes[id(node)] = total
    return sizes[id(root)]


def _reject_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateJsonKey(k)
        out[k] = v
    return out


class _DuplicateJsonKey(ValueError):
    pass


def parse_text(text: str, display: str, path: Path) -> Tuple[Optional[SourceFile], List[Diagnostic]]:
    try:
        return _parse_text(text, display, path)
    except RecursionError:
        return None, [Diagnostic("GW001", "the document is nested too deeply to process", display, 1, 1)]


def _parse_text(text: str, display: str, path: Path) -> Tuple[Optional[SourceFile], List[Diagnostic]]:
    errors: List[Diagnostic] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text, object_pairs_hook=_reject_duplicates)
            return SourceFile(path, display, text, data), []
        except json.JSONDecodeError as exc:
            return None, [Diagnostic("GW001", f"malformed JSON: {exc.msg}", display, exc.lineno, exc.colno)]
        except _DuplicateJsonKey:
            pass  # fall through to the YAML path, which can say where the duplicate is
    if _flow_depth_exceeds(text, MAX_FLOW_DEPTH):
        return None, [Diagnostic("GW001", f"the document nests more than {MAX_FLOW_DEPTH} levels deep", display, 1, 1)]
    try:
        root = yaml.compose(text, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        return None, [Diagnostic("GW001", f"malformed {kind}: {problem}", display, line, col)]
    try:
        too_big = root is not None and _ANCHOR.search(text) is not None and _expanded_size(root) > MAX_EXPANDED_NODES
    except _RecursiveAlias:
        return None, [Diagnostic("GW001", "a YAML alias refers to its own anchor; the document has no JSON form", display, 1, 1)]
    if too_big:
        return None, [Diagnostic("GW001", f"YAML aliases expand the document past {MAX_EXPANDED_NODES:,} nodes", display, 1, 1)]
    data = _construct(root, display, errors, "", {}) if root is not None else None
    src = SourceFile(path, display, text, data, root, True)
    return src, errors


@dataclass
class Document:
    """The root file plus every file reached through $ref."""

    root: SourceFile
    files: Dict[Path, SourceFile] = field(default_factory=dict)
    errors: List[Diagnostic] = field(default_factory=list)

    @property
    def data(self) -> Any:
        return self.root.data

    def _file(self, target: Path, referrer: SourceFile) -> SourceFile:
        target = target.resolve()
        if target in self.files:
            return self.files[target]
        display = _display_path(target, self.root)
        try:
            text = target.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise LoadError(Diagnostic("GW011", f"cannot read referenced file {display}: {_reason(exc)}", referrer.display))
        src, errs = parse_text(text, display, target)
        if src is None or errs:
            raise LoadError(errs[0])
        self.files[target] = src
        return src

    def resolve(self, ref: str, base: SourceFile) -> Tuple[Any, SourceFile, str]:
        """Resolve one $ref string relative to base. Raises LoadError."""
        if not isinstance(ref, str):
            raise LoadError(Diagnostic("GW011", "$ref must be a string", base.display))
        file_part, _, fragment = ref.partition("#")
        if file_part.startswith(("http://", "https://")):
            raise LoadError(Diagnostic("GW011", f"remote $ref {ref!r} is not supported; vendor the file and use a relative path", base.display))
        src = self._file(base.path.parent / unquote(file_part), base) if file_part else base
        ptr = unquote(fragment)
        node: Any = src.data
        try:
            for token in split_pointer(ptr):
                if isinstance(node, list):
                    node = node[int(token)]
                elif isinstance(node, dict):
                    node = node[token]
                else:
                    raise KeyError(token)
        except (KeyError, IndexError, ValueError):
            raise LoadError(Diagnostic("GW011", f"unresolvable $ref {ref!r}: no such target", base.display))
        return node, src, ptr

    def deref(self, value: Any, src: SourceFile, ptr: str, limit: int = 32) -> Tuple[Any, SourceFile, str]:
        """Follow a chain of {$ref: ...} objects to the first non-reference value."""
        for _ in range(limit):
            if isinstance(value, dict) and "$ref" in value:
                value, src, ptr = self.resolve(value["$ref"], src)
            else:
                return value, src, ptr
        raise LoadError(Diagnostic("GW011", "$ref chain is circular", src.display, *src.position(ptr), ptr))

    def input_hashes(self) -> Dict[str, str]:
        """sha256 of every input file, keyed by its path relative to the root spec's folder."""
        base = self.root.path.parent
        out = {}
        for src in self.files.values():
            try:
                key = src.path.relative_to(base).as_posix()
            except ValueError:
                key = src.path.as_posix()
            out[key] = src.sha256
        return dict(sorted(out.items()))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _display_path(target: Path, root: SourceFile) -> str:
    try:
        rel = target.relative_to(root.path.parent.resolve())
        base = Path(root.display).parent
        return str(base / rel) if str(base) != "." else str(rel)
    except ValueError:
        return str(target)


def load(path: str) -> Tuple[Optional[Document], List[Diagnostic]]:
    p = Path(path)
    display = str(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Diagnostic("GW003", f"cannot read {display}: {_reason(exc)}", display)]
    src, errors = parse_text(text, display, p.resolve())
    if src is None:
        return None, errors
    src.display = display
    doc = Document(src, {src.path: src})
    return doc, errors


def walk_refs(value: Any, ptr: str = ""):
    """Yield (pointer, ref) for every $ref string in a data tree (iteratively)."""
    stack = [(value, ptr)]
    seen = set()
    while stack:
        node, p = stack.pop()
        if isinstance(node, dict):
            if id(node) in seen:
                continue
            seen.add(id(node))
            ref = node.get("$ref")
            if isinstance(ref, str):
                yield p + "/$ref", ref
            for k, v in node.items():
                if isinstance(v, (dict, list)):
                    stack.append((v, f"{p}/{escape_pointer_token(k)}"))
        elif isinstance(node, list):
            if id(node) in seen:
                continue
            seen.add(id(node))
            for i, v in enumerate(node):
                if isinstance(v, (dict, list)):
                    stack.append((v, f"{p}/{i}"))
