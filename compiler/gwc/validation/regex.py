"""ECMA-262 `pattern` -> PCRE for ngx.re, decided at build time.

ngx.re runs PCRE, whose syntax and semantics differ from ECMA-262 in places
that matter for validation: `$` also matches before a final newline, `.`
matches \\r and U+2028, `\\s` is ASCII-only, `\\v` is a class, `[[:` opens a
POSIX class, `\\uXXXX` does not exist. Each is rewritten. Constructs that
cannot run safely in a backtracking engine on attacker input (lookbehind,
backreferences, a repeated group whose body repeats without a separator,
e.g. `(a+)+`) are refused with a diagnostic instead of translated.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

# ECMA-262 WhiteSpace and LineTerminator code points.
_WS = r"\t\n\x0b\f\r \x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}\x{feff}"
_DOT = r"[^\n\r\x{2028}\x{2029}]"


class PatternError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code  # GW071 (invalid) or GW072 (unsafe)


@dataclass(frozen=True)
class Translated:
    pcre: str
    utf8: bool  # needs PCRE UTF-8 mode ("u"): code-point semantics matter


@dataclass
class _Group:
    unbounded_inner: bool = False  # some element inside repeats
    seps: int = 0                  # mandatory single-character elements
    alternation: bool = False
    alts: List[str] = field(default_factory=list)
    start: int = 0                 # index in the output list
    alt_start: int = -1


# Unicode General_Category long names and aliases -> the short names PCRE accepts.
_PROPERTY_ALIASES = {
    "Letter": "L", "Cased_Letter": "L&", "Uppercase_Letter": "Lu", "Lowercase_Letter": "Ll",
    "Titlecase_Letter": "Lt", "Modifier_Letter": "Lm", "Other_Letter": "Lo", "Mark": "M", "Combining_Mark": "M",
    "Nonspacing_Mark": "Mn", "Spacing_Mark": "Mc", "Enclosing_Mark": "Me", "Number": "N", "Decimal_Number": "Nd",
    "digit": "Nd", "Letter_Number": "Nl", "Other_Number": "No", "Punctuation": "P", "punct": "P",
    "Connector_Punctuation": "Pc", "Dash_Punctuation": "Pd", "Open_Punctuation": "Ps", "Close_Punctuation": "Pe",
    "Initial_Punctuation": "Pi", "Final_Punctuation": "Pf", "Other_Punctuation": "Po", "Symbol": "S",
    "Math_Symbol": "Sm", "Currency_Symbol": "Sc", "Modifier_Symbol": "Sk", "Other_Symbol": "So",
    "Separator": "Z", "Space_Separator": "Zs", "Line_Separator": "Zl", "Paragraph_Separator": "Zp",
    "Other": "C", "Control": "Cc", "cntrl": "Cc", "Format": "Cf", "Surrogate": "Cs", "Private_Use": "Co",
    "Unassigned": "Cn", "General_Category": "Any",
}

_HEX = set("0123456789abcdefABCDEF")


def _hex(p: str, i: int, n: int) -> Optional[int]:
    s = p[i:i + n]
    if len(s) == n and all(ch in _HEX for ch in s):
        return int(s, 16)
    return None


def _fixed_length_body(p: str, i: int) -> bool:
    """Whether the group body starting at i, up to its ')', matches a fixed
    number of characters: no quantifier, group, alternation or backreference."""
    n = len(p)
    in_class = False
    while i < n:
        c = p[i]
        if c == "\\":
            nxt = p[i + 1] if i + 1 < n else ""
            if (nxt.isdigit() and nxt != "0") or nxt == "k":
                return False
            i += 2
            if nxt in "pPu" and i < n and p[i] == "{":
                end = p.find("}", i)
                if end < 0:
                    return False
                i = end + 1
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == ")":
            return True
        elif c in "(|*+?{":
            return False
        i += 1
    return False


def translate(pattern: str) -> Translated:
    """Raises PatternError."""
    out: List[str] = []
    utf8 = any(ord(ch) > 0x7F for ch in pattern)
    stack: List[_Group] = [_Group()]
    i, n = 0, len(pattern)
    # What the last complete atom was, for quantifier analysis:
    # ("group", _Group) / ("char", None) / ("class", None) / None
    last: Optional[Tuple[str, Optional[_Group]]] = None

    def escape_seq(j: int, in_class: bool) -> Tuple[str, int, str]:
        """Translate the escape at pattern[j] == '\\'; returns (pcre, next index, kind)."""
        nonlocal utf8
        if j + 1 >= n:
            raise PatternError("GW071", "pattern ends with a lone backslash")
        ch = pattern[j + 1]
        if ch in "dDwW":
            if ch in "DW":
                utf8 = True  # one code point, not one byte
            return "\\" + ch, j + 2, "class"
        if ch == "s":
            utf8 = True
            return (_WS if in_class else "[" + _WS + "]"), j + 2, "class"
        if ch == "S":
            utf8 = True
            if in_class:
                return "\\S", j + 2, "class"  # approximation: ASCII whitespace only
            return "[^" + _WS + "]", j + 2, "class"
        if ch in "bB":
            if in_class:
                return ("\\x08" if ch == "b" else "B"), j + 2, "char"
            return "\\" + ch, j + 2, "assert"
        if ch in "tnfr":
            return "\\" + ch, j + 2, "char"
        if ch == "v":
            return "\\x0b", j + 2, "char"
        if ch == "0":
            # Annex B legacy octal escape: \0 plus up to two octal digits.
            end = j + 2
            while end < min(j + 4, n) and pattern[end] in "01234567":
                end += 1
            return "\\x%02x" % int(pattern[j + 1:end], 8), end, "char"
        if ch.isdigit():
            raise PatternError("GW072", f"backreference \\{ch} cannot run safely (and PCRE's meaning differs)")
        if ch == "k" and j + 2 < n and pattern[j + 2] == "<":
            raise PatternError("GW072", "named backreference \\k<...> cannot run safely")
        if ch == "c":
            if j + 2 < n and pattern[j + 2].isalpha():
                return "\\c" + pattern[j + 2].upper(), j + 3, "char"
            raise PatternError("GW071", "\\c must be followed by a letter")
        if ch == "x":
            v = _hex(pattern, j + 2, 2)
            if v is None:
                raise PatternError("GW071", "\\x must be followed by two hex digits")
            return "\\x%02x" % v, j + 4, "char"
        if ch == "u":
            if j + 2 < n and pattern[j + 2] == "{":
                end = pattern.find("}", j + 3)
                v = _hex(pattern, j + 3, end - j - 3) if end > j + 3 else None
                if v is None or v > 0x10FFFF:
                    raise PatternError("GW071", "bad \\u{...} escape")
                utf8 = utf8 or v > 0x7F
                return "\\x{%x}" % v, end + 1, "char"
            v = _hex(pattern, j + 2, 4)
            if v is None:
                raise PatternError("GW071", "\\u must be followed by four hex digits")
            nxt = j + 6
            if 0xD800 <= v <= 0xDBFF and pattern[nxt:nxt + 2] == "\\u":
                lo = _hex(pattern, nxt + 2, 4)
                if lo is not None and 0xDC00 <= lo <= 0xDFFF:
                    v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00)
                    nxt += 6
            if 0xD800 <= v <= 0xDFFF:
                raise PatternError("GW071", "lone surrogate in \\u escape")
            utf8 = utf8 or v > 0x7F
            return "\\x{%x}" % v, nxt, "char"
        if ch in "pP":
            if j + 2 < n and pattern[j + 2] == "{":
                end = pattern.find("}", j + 3)
                if end < 0:
                    raise PatternError("GW071", "unterminated \\p{...}")
                name = pattern[j + 3:end]
                if not name.replace("_", "").replace("=", "").isalnum():
                    raise PatternError("GW071", f"bad property name {name!r}")
                utf8 = True
                if "=" in name:  # General_Category=Letter / Script=Greek
                    name = name.split("=", 1)[1]
                name = _PROPERTY_ALIASES.get(name, name)  # PCRE knows the short names
                return "\\" + ch + "{" + name + "}", end + 1, "class"
            raise PatternError("GW071", "\\p must be followed by {...}")
        if ch.isalnum():
            raise PatternError("GW071", f"\\{ch} is not an ECMA-262 escape")
        return "\\" + ch, j + 2, "char"

    while i < n:
        ch = pattern[i]
        if ch == "\\":
            text, i, kind = escape_seq(i, False)
            out.append(text)
            last = (kind, None) if kind != "assert" else None
            if kind in ("char", "class"):
                stack[-1].seps += 1
            continue
        if ch == "[":
            j = i + 1
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
                utf8 = True  # a negated class matches one code point, not one byte
            parts: List[str] = []
            closed = False
            while j < n:
                c = pattern[j]
                if c == "]":
                    closed = True
                    j += 1
                    break
                if c == "\\":
                    text, j, _ = escape_seq(j, True)
                    parts.append(text)
                    continue
                if c in "[^":
                    parts.append("\\" + c)
                else:
                    parts.append(c)
                j += 1
            if not closed:
                raise PatternError("GW071", "unterminated character class")
            if not parts:
                out.append(r"[\s\S]" if negate else "(?!)")
            else:
                out.append("[" + ("^" if negate else "") + "".join(parts) + "]")
            i = j
            last = ("class", None)
            stack[-1].seps += 1
            continue
        if ch == "(":
            lookbehind = pattern.startswith("(?<=", i) or pattern.startswith("(?<!", i)
            if lookbehind and not _fixed_length_body(pattern, i + 4):
                raise PatternError("GW072", "lookbehind must have a fixed length (characters, escapes and classes, no quantifier, group or alternation): PCRE needs that")
            g = _Group(start=len(out) + 1)
            if lookbehind:
                out.append(pattern[i:i + 4])
                i += 4
            elif pattern.startswith("(?:", i) or pattern.startswith("(?=", i) or pattern.startswith("(?!", i):
                out.append(pattern[i:i + 3])
                i += 3
            elif pattern.startswith("(?<", i):
                end = pattern.find(">", i)
                name = pattern[i + 3:end] if end > 0 else ""
                if not name or not (name[0].isalpha() or name[0] in "_$") or not all(c.isalnum() or c in "_$" for c in name) or "$" in name:
                    raise PatternError("GW071", "bad group name")
                out.append("(?<" + name + ">")
                i = end + 1
            elif pattern.startswith("(?", i):
                raise PatternError("GW071", f"unsupported group syntax {pattern[i:i + 3]!r}")
            else:
                out.append("(")
                i += 1
            stack.append(g)
            last = None
            continue
        if ch == ")":
            if len(stack) == 1:
                raise PatternError("GW071", "unbalanced parenthesis")
            g = stack.pop()
            if g.alternation:
                g.alts.append("".join(out[g.alt_start:]))
            out.append(")")
            i += 1
            last = ("group", g)
            parent = stack[-1]
            parent.unbounded_inner = parent.unbounded_inner or g.unbounded_inner
            continue
        if ch == "|":
            g = stack[-1]
            g.alternation = True
            g.alts.append("".join(out[g.start if g.alt_start < 0 else g.alt_start:]))
            out.append("|")
            g.alt_start = len(out)
            i += 1
            last = None
            continue
        if ch in "*+?{":
            quant = ch
            j = i + 1
            repeats = ch in "*+"
            if ch == "{":
                end = pattern.find("}", i)
                body = pattern[i + 1:end] if end > 0 else ""
                lo, sep, hi = body.partition(",")
                if end > 0 and lo.isdigit() and (not sep or hi == "" or hi.isdigit()):
                    quant = pattern[i:end + 1]
                    j = end + 1
                    repeats = (sep and hi == "") or (hi.isdigit() and int(hi) > 1) or (not sep and int(lo) > 1)
                    if hi.isdigit() and int(hi) < int(lo):
                        raise PatternError("GW071", "quantifier range out of order")
                else:
                    # ECMA (without the u flag) reads a stray brace as a literal.
                    out.append("\\{")
                    i += 1
                    last = ("char", None)
                    stack[-1].seps += 1
                    continue
            if last is None:
                raise PatternError("GW071", f"nothing to repeat at offset {i}")
            if j < n and pattern[j] == "?":
                quant += "?"
                j += 1
            kind, g = last
            if repeats and kind == "group" and g is not None:
                dup_alts = g.alternation and len(set(g.alts)) < len(g.alts)
                if (g.unbounded_inner and g.seps <= 0) or dup_alts:
                    raise PatternError(
                        "GW072",
                        "nested quantifier: a repeated group whose body can itself repeat "
                        "backtracks exponentially on a near-miss (e.g. (a+)+); rewrite it without the nesting",
                    )
            if repeats:
                stack[-1].unbounded_inner = True
            if kind in ("char", "class") and not (ch == "{" and "," not in quant):
                stack[-1].seps -= 1  # optional or repeated: no longer a separator
            out.append(quant)
            i = j
            last = None
            continue
        if ch == ".":
            out.append(_DOT)
            utf8 = True
            i += 1
            last = ("class", None)
            continue
        if ch == "$":
            out.append("\\z")  # PCRE's $ also matches before a final newline
            i += 1
            last = None
            continue
        if ch == "^":
            out.append("^")
            i += 1
            last = None
            continue
        if ch in "]}":
            out.append("\\" + ch)
            i += 1
            last = ("char", None)
            stack[-1].seps += 1
            continue
        out.append(ch)
        i += 1
        last = ("char", None)
        stack[-1].seps += 1
    if len(stack) != 1:
        raise PatternError("GW071", "unbalanced parenthesis")
    return Translated("".join(out), utf8)
