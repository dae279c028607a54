"""Code generation for the keywords of one schema: the body of one Lua function.

See schema.py for the function signature and the calling convention.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from ..diagnostics import WARNING
from .lua_text import lua_num, lua_str
from .regex import PatternError, translate
from .space import Loc, RefError

if TYPE_CHECKING:
    from .schema import SchemaCompiler


# Formats with a runtime check; any other format is an annotation only.
STRING_FORMATS = ("date-time", "date", "time", "email", "uuid", "ipv4", "ipv6", "uri", "hostname", "byte")
NUMBER_FORMATS = {"int32": (-2 ** 31, 2 ** 31 - 1), "int64": (-2 ** 63, 2 ** 63 - 1)}


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Fn:
    """The body of one generated function."""

    def __init__(self, comp: "SchemaCompiler", ix: int, loc: Loc, ctx: Tuple = ()):
        self.c = comp
        self.ctx = ctx
        self.ix = ix
        self.loc = loc
        self.lines: List[str] = []
        self.ind = 1
        self.uses_ok = False

    # -- emit helpers --------------------------------------------------------
    def w(self, line: str) -> None:
        self.lines.append("    " * (self.ind - 1) + line)

    def open(self, line: str) -> None:
        self.w(line)
        self.ind += 1

    def close(self, line: str = "end") -> None:
        self.ind -= 1
        self.w(line)

    def fail(self, kw: str, msg: str, token: Optional[str] = None, depth: str = "d", msg_is_expr: bool = False) -> None:
        self.uses_ok = True
        m = msg if msg_is_expr else lua_str(msg)
        extra = f", {token}" if token else ""
        self.w("if not c then return false end")
        self.w("ok = false")
        self.w(f"if err({depth}, {lua_str(kw)}, {m}{extra}) then return false end")

    def child_failed(self) -> None:
        """After a child call in collect mode returned false."""
        self.uses_ok = True
        self.w("if not c then return false end")
        self.w("ok = false")
        self.w("if S.full then return false end")

    def call_child(self, target: int, value: str, token: str, collect: str = "c") -> None:
        self.w(f"P[d + 1] = {token}")
        self.open(f"if not F[{target}]({value}, d + 1, {collect}, nil) then")
        self.child_failed()
        self.close()

    def sub(self, *tokens) -> int:
        return self.c.fn(self.loc.child(*tokens), self.ctx)

    def inplace(self, target: int) -> None:
        self.c.inplace.setdefault(self.ix, []).append(target)

    def render(self) -> str:
        head = [f"F[{self.ix}] = function(v, d, c, ev)"]
        if self.uses_ok:
            head.append("    local ok = true")
        body = self.lines
        tail = ["    return ok" if self.uses_ok else "    return true", "end", ""]
        if body and body[-1].startswith("return"):
            tail = ["end", ""]
            body = ["    " + l for l in body]
        else:
            body = ["    " + l for l in body]
        return "\n".join(head + body + tail)

    # -- the schema ------------------------------------------------------------
    def body(self, s: Any) -> None:
        c = self.c
        if s is True or s == {}:
            return
        if s is False:
            self.fail("false", "no value is allowed here")
            return
        if not isinstance(s, dict):
            c.problem("GW070", f"a schema must be an object, not {type(s).__name__}", self.loc)
            return
        if "$ref" in s and c.d4:
            # OpenAPI 3.0 Reference Object / draft 4: siblings of $ref are ignored.
            target = c.fn(c.space.resolve(s["$ref"], self.loc), self.ctx)
            self.inplace(target)
            self.lines.append(f"return F[{target}](v, d, c, ev)")
            return
        if c.openapi and c.d4 and s.get("nullable") is True:
            self.w("if v == NULL then return true end")
        tracks = ("unevaluatedProperties" in s or "unevaluatedItems" in s) and not c.d4
        if tracks:
            # Our own evaluated set; the caller's (ev0) is filled at the end.
            self.w("local ev0 = ev")
            self.w("local ev = (getmetatable(v) == OBJ or getmetatable(v) == ARR) and {} or nil")
        if self._needs_num(s):
            if c.d4:
                self.w("local n = v")
                self.w("if getmetatable(v) == NUMBOX then n = v[1] end")
            else:
                self.w("local n = v")
        self.kw_type(s)
        self.kw_enum_const(s)
        self.kw_numbers(s)
        self.kw_strings(s)
        self.kw_arrays(s)
        self.kw_objects(s)
        self.kw_combinators(s)
        if not c.d4:
            if isinstance(s.get("$ref"), str):
                target = c.fn(c.space.resolve(s["$ref"], self.loc), self.ctx)
                self.inplace(target)
                self.open(f"if not F[{target}](v, d, c, ev) then")
                self.child_failed()
                self.close()
            if isinstance(s.get("$dynamicRef"), str):
                target = c.fn(c.dynamic_target(s["$dynamicRef"], self.loc, self.ctx), self.ctx)
                self.inplace(target)
                self.open(f"if not F[{target}](v, d, c, ev) then")
                self.child_failed()
                self.close()
        if tracks:
            self.kw_unevaluated(s)

    def _needs_num(self, s: dict) -> bool:
        return any(k in s for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "enum", "const", "type", "format"))

    # -- type ------------------------------------------------------------------
    def pred(self, t: str) -> Optional[str]:
        return {
            "null": "v == NULL",
            "boolean": 'type(v) == "boolean"',
            "object": "getmetatable(v) == OBJ",
            "array": "getmetatable(v) == ARR",
            "number": 'type(n) == "number"',
            "integer": 'type(v) == "number" and v % 1 == 0',
            "string": 'type(v) == "string"',
        }.get(t)

    def kw_type(self, s: dict) -> None:
        if "type" not in s:
            return
        t = s["type"]
        types = t if isinstance(t, list) else [t]
        if self.c.openapi and self.c.d4 and s.get("nullable") is True and "null" not in types:
            types = types + ["null"]
        if not types:
            self.fail("type", "no type is allowed")
            return
        if "number" in types and "integer" in types:
            types = [x for x in types if x != "integer"]
        cond = " or ".join(f"({self.pred(x)})" if " and " in self.pred(x) else self.pred(x) for x in types)
        self.open(f"if not ({cond}) then")
        names = " or ".join(types)
        self.fail("type", f"must be {names}")
        self.close()

    # -- enum / const -----------------------------------------------------------
    def _equals(self, value: Any) -> str:
        if isinstance(value, bool):
            return f"v == {'true' if value else 'false'}"
        if value is None:
            return "v == NULL"
        if isinstance(value, (int, float)):
            return f"n == {lua_num(value)}"
        if isinstance(value, str):
            return f"v == {lua_str(value)}"
        return f"equal(v, {self.c.const(value)})"

    def kw_enum_const(self, s: dict) -> None:
        if "enum" in s:
            values = s["enum"]  # a list: shapes.shape_error checked it
            strings = [x for x in values if isinstance(x, str)]
            if len(strings) > 8:
                # One hash lookup instead of a chain of comparisons.
                lookup = self.c.const(dict.fromkeys(strings, True))
                parts = [f'(type(v) == "string" and {lookup}[v] == true)']
                parts += [self._equals(x) for x in values if not isinstance(x, str)]
            else:
                parts = [self._equals(x) for x in values]
            cond = " or ".join(parts) or "false"
            self.open(f"if not ({cond}) then")
            self.fail("enum", "must be equal to one of the allowed values: " + _short(values, 120))
            self.close()
        if "const" in s and not self.c.d4:
            self.open(f"if not ({self._equals(s['const'])}) then")
            self.fail("const", "must be equal to " + _short(s["const"], 120))
            self.close()

    # -- numbers ----------------------------------------------------------------
    @staticmethod
    def _number(s: dict, kw: str) -> Optional[float]:
        v = s.get(kw)  # shapes.shape_error already dropped values of the wrong type
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def kw_numbers(self, s: dict) -> None:
        checks: List[Tuple[str, str, str]] = []
        mx, mn = self._number(s, "maximum"), self._number(s, "minimum")
        if self.c.d4:
            if mx is not None:
                if s.get("exclusiveMaximum") is True:
                    checks.append((f"n >= {lua_num(mx)}", "maximum", f"must be < {mx}"))
                else:
                    checks.append((f"n > {lua_num(mx)}", "maximum", f"must be <= {mx}"))
            if mn is not None:
                if s.get("exclusiveMinimum") is True:
                    checks.append((f"n <= {lua_num(mn)}", "minimum", f"must be > {mn}"))
                else:
                    checks.append((f"n < {lua_num(mn)}", "minimum", f"must be >= {mn}"))
        else:
            if mx is not None:
                checks.append((f"n > {lua_num(mx)}", "maximum", f"must be <= {mx}"))
            if mn is not None:
                checks.append((f"n < {lua_num(mn)}", "minimum", f"must be >= {mn}"))
            emx, emn = self._number(s, "exclusiveMaximum"), self._number(s, "exclusiveMinimum")
            if emx is not None:
                checks.append((f"n >= {lua_num(emx)}", "exclusiveMaximum", f"must be < {emx}"))
            if emn is not None:
                checks.append((f"n <= {lua_num(emn)}", "exclusiveMinimum", f"must be > {emn}"))
        mo = self._number(s, "multipleOf")
        if mo is not None:
            if mo <= 0:
                self.c.problem("GW070", "multipleOf must be greater than 0", self.loc.child("multipleOf"))
            else:
                checks.append((f"not multiple_of(n, {lua_num(mo)})", "multipleOf", f"must be a multiple of {mo}"))
        fmt = s.get("format")
        if isinstance(fmt, str) and fmt in NUMBER_FORMATS:
            lo, hi = NUMBER_FORMATS[fmt]
            checks.append((f"n % 1 ~= 0 or n < {lua_num(lo)} or n > {lua_num(hi)}", "format", f"must be an integer in the {fmt} range"))
        if not checks:
            return
        self.open('if type(n) == "number" then')
        for cond, kw, msg in checks:
            self.open(f"if {cond} then")
            self.fail(kw, msg)
            self.close()
        self.close()

    # -- strings ------------------------------------------------------------------
    @staticmethod
    def _count(s: dict, kw: str) -> Optional[int]:
        v = s.get(kw)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def kw_strings(self, s: dict) -> None:
        mx, mn = self._count(s, "maxLength"), self._count(s, "minLength")
        pattern = s.get("pattern")
        fmt = s.get("format")
        has_fmt = isinstance(fmt, str) and fmt in STRING_FORMATS
        if mx is None and mn is None and pattern is None and not has_fmt:
            return
        self.open('if type(v) == "string" then')
        if mx is not None:
            # Code points never outnumber bytes, so the byte length decides most cases.
            self.open(f"if #v > {mx} and utf8_len(v) > {mx} then")
            self.fail("maxLength", f"must NOT have more than {mx} characters")
            self.close()
        if mn is not None and mn > 0:
            self.open(f"if #v < {mn} or utf8_len(v) < {mn} then")
            self.fail("minLength", f"must NOT have fewer than {mn} characters")
            self.close()
        if pattern is not None:
            if not isinstance(pattern, str):
                self.c.problem("GW070", "pattern must be a string", self.loc.child("pattern"))
            else:
                try:
                    tr = translate(pattern)
                except PatternError as exc:
                    self.c.problem(exc.code, f"pattern {pattern!r}: {exc}", self.loc.child("pattern"))
                    tr = None
                if tr is not None:
                    opts = "jou" if tr.utf8 else "jo"
                    self.open(f"if not re_find(v, {lua_str(tr.pcre)}, {lua_str(opts)}) then")
                    self.fail("pattern", f"must match pattern {pattern}")
                    self.close()
        if has_fmt:
            self.open(f"if not FMT[{lua_str(fmt)}](v) then")
            self.fail("format", f"must be a valid {fmt}")
            self.close()
        self.close()

    # -- arrays ---------------------------------------------------------------------
    def kw_arrays(self, s: dict) -> None:
        keys = ("items", "prefixItems", "additionalItems", "maxItems", "minItems", "uniqueItems", "contains")
        if not any(k in s for k in keys):
            return
        c = self.c
        self.open("if getmetatable(v) == ARR then")
        self.w("local len = #v")
        mx, mn = self._count(s, "maxItems"), self._count(s, "minItems")
        if mx is not None:
            self.open(f"if len > {mx} then")
            self.fail("maxItems", f"must NOT have more than {mx} items")
            self.close()
        if mn is not None and mn > 0:
            self.open(f"if len < {mn} then")
            self.fail("minItems", f"must NOT have fewer than {mn} items")
            self.close()
        if s.get("uniqueItems") is True:
            self.open("if len > 1 and not unique(v) then")
            self.fail("uniqueItems", "must NOT have duplicate items")
            self.close()
        items = s.get("items")
        prefix: Optional[list] = None
        rest_kw, rest = None, None
        if c.d4:
            if isinstance(items, list):
                prefix, rest_kw, rest = items, "additionalItems", s.get("additionalItems")
            elif items is not None:
                rest_kw, rest = "items", items
        else:
            if isinstance(s.get("prefixItems"), list):
                prefix = s["prefixItems"]
            if items is not None:
                rest_kw, rest = "items", items
        start = 1
        if prefix is not None:
            base = "items" if c.d4 else "prefixItems"
            for i in range(len(prefix)):
                t = self.sub(base, i)
                self.open(f"if len >= {i + 1} then")
                self.call_child(t, f"v[{i + 1}]", str(i + 1))
                self.close()
            if prefix and not c.d4:
                self.w(f"if ev then for i = 1, len < {len(prefix)} and len or {len(prefix)} do ev[i] = true end end")
            start = len(prefix) + 1
        if rest is not None and rest is not True and rest != {}:
            t = self.sub(rest_kw)
            self.open(f"for i = {start}, len do")
            self.call_child(t, "v[i]", "i")
            self.close()
        if rest is not None and not c.d4:
            self.w(f"if ev and len >= {start} then ev[ALL] = true end")
        if "contains" in s and not c.d4:
            t = self.sub("contains")
            mnc = self._count(s, "minContains")
            mxc = self._count(s, "maxContains")
            lo = 1 if mnc is None else mnc
            self.open("do")
            self.w("local found = 0")
            self.open("for i = 1, len do")
            self.w("P[d + 1] = i")
            self.open(f"if F[{t}](v[i], d + 1, false, nil) then")
            self.w("found = found + 1")
            self.w("if ev then ev[i] = true end")
            self.close()
            self.close()
            if lo > 0:
                self.open(f"if found < {lo} then")
                self.fail("contains" if mnc is None else "minContains", f"must contain at least {lo} valid item(s)")
                self.close()
            if mxc is not None:
                self.open(f"if found > {mxc} then")
                self.fail("maxContains", f"must contain at most {mxc} valid item(s)")
                self.close()
            self.close()
        self.close()

    # -- objects ------------------------------------------------------------------
    def _read_only(self, sub: Any, loc: Loc) -> bool:
        try:
            for _ in range(16):
                if isinstance(sub, dict) and "$ref" in sub and isinstance(sub["$ref"], str):
                    loc = self.c.space.resolve(sub["$ref"], loc)
                    sub = self.c.space.node(loc)
                    continue
                break
        except (RefError, KeyError, IndexError, ValueError, TypeError):
            return False
        return isinstance(sub, dict) and sub.get("readOnly") is True

    def kw_objects(self, s: dict) -> None:
        c = self.c
        keys = ("properties", "patternProperties", "additionalProperties", "required", "maxProperties",
                "minProperties", "dependencies", "dependentRequired", "dependentSchemas", "propertyNames")
        if not any(k in s for k in keys):
            return
        self.open("if getmetatable(v) == OBJ then")
        mx, mn = self._count(s, "maxProperties"), self._count(s, "minProperties")
        if mx is not None:
            self.open(f"if #v > {mx} then")
            self.fail("maxProperties", f"must NOT have more than {mx} properties")
            self.close()
        if mn is not None and mn > 0:
            self.open(f"if #v < {mn} then")
            self.fail("minProperties", f"must NOT have fewer than {mn} properties")
            self.close()
        req = s.get("required")
        if isinstance(req, list):
            for name in req:
                if isinstance(name, str):
                    self.open(f"if v[{lua_str(name)}] == nil then")
                    self.fail("required", f"must have required property '{name}'", token=lua_str(name))
                    self.close()
        elif req is not None and not isinstance(req, bool):
            c.problem("GW070", "required must be an array of strings", self.loc.child("required"))
        props = s.get("properties") if isinstance(s.get("properties"), dict) else {}
        for name, sub in props.items():
            if sub is True or sub == {}:
                self.w(f"if ev and v[{lua_str(name)}] ~= nil then ev[{lua_str(name)}] = true end")
                continue
            t = self.sub("properties", name)
            self.open("do")
            self.w(f"local p = v[{lua_str(name)}]")
            self.open("if p ~= nil then")
            if self.c.reject_read_only and self._read_only(sub, self.loc.child("properties", name)):
                self.w(f"P[d + 1] = {lua_str(name)}")
                self.fail("readOnly", f"'{name}' is read-only and must not be sent", depth="d + 1")
            self.w(f"if ev then ev[{lua_str(name)}] = true end")
            self.call_child(t, "p", lua_str(name))
            self.close()
            self.close()
        pprops = s.get("patternProperties") if isinstance(s.get("patternProperties"), dict) else {}
        addl = s.get("additionalProperties")
        pats: List[Tuple[str, int, str]] = []
        for pat in pprops:
            try:
                tr = translate(pat)
            except PatternError as exc:
                c.problem(exc.code, f"pattern {pat!r}: {exc}", self.loc.child("patternProperties", pat))
                continue
            pats.append((tr.pcre, self.sub("patternProperties", pat), "jou" if tr.utf8 else "jo"))
        if pats or (addl is not None and addl is not True):
            self.open("for i = 1, #v do")
            self.w("local k = v[i]")
            if addl is not None and addl is not True:
                known = " or ".join(f"k == {lua_str(k)}" for k in props) if len(props) <= 8 else None
                if known is None:
                    self.w(f"local matched = {self.c.const(dict.fromkeys(props, True))}[k] ~= nil")
                else:
                    self.w(f"local matched = {known or 'false'}")
            for pcre, t, opts in pats:
                self.open(f"if re_find(k, {lua_str(pcre)}, {lua_str(opts)}) then")
                if addl is not None and addl is not True:
                    self.w("matched = true")
                self.w("if ev then ev[k] = true end")
                self.call_child(t, "v[k]", "k")
                self.close()
            if addl is not None and addl is not True:
                self.open("if not matched then")
                if addl is False:
                    self.w("P[d + 1] = k")
                    self.fail("additionalProperties", "must NOT have additional properties", depth="d + 1")
                else:
                    t = self.sub("additionalProperties")
                    self.w("if ev then ev[k] = true end")
                    self.call_child(t, "v[k]", "k")
                self.close()
            self.close()
        if addl is not None and not c.d4:
            self.w("if ev then for i = 1, #v do ev[v[i]] = true end end")
        deps = {}
        if c.d4 and isinstance(s.get("dependencies"), dict):
            deps = s["dependencies"]
        for name, dep in deps.items():
            self._dependency(name, dep, "dependencies")
        if not c.d4:
            for name, dep in (s.get("dependentRequired") or {}).items() if isinstance(s.get("dependentRequired"), dict) else ():
                self._dependency(name, dep, "dependentRequired")
            for name, dep in (s.get("dependentSchemas") or {}).items() if isinstance(s.get("dependentSchemas"), dict) else ():
                self._dependency(name, dep, "dependentSchemas")
        if "propertyNames" in s and not c.d4:
            t = self.sub("propertyNames")
            self.open("for i = 1, #v do")
            self.call_child(t, "v[i]", "v[i]")
            self.close()
        self.close()

    def _dependency(self, name: str, dep: Any, kw: str) -> None:
        self.open(f"if v[{lua_str(name)}] ~= nil then")
        if isinstance(dep, list):
            for other in dep:
                if isinstance(other, str):
                    self.open(f"if v[{lua_str(other)}] == nil then")
                    self.fail(kw, f"must have property '{other}' when property '{name}' is present", token=lua_str(other))
                    self.close()
        else:
            t = self.sub(kw, name)
            self.inplace(t)
            self.open(f"if not F[{t}](v, d, c, ev) then")
            self.child_failed()
            self.close()
        self.close()

    # -- combinators ----------------------------------------------------------------
    def kw_combinators(self, s: dict) -> None:
        c = self.c
        for i, _ in enumerate(s.get("allOf") or ()):
            t = self.sub("allOf", i)
            self.inplace(t)
            self.open(f"if not F[{t}](v, d, c, ev) then")
            self.child_failed()
            self.close()
        disc = s.get("discriminator") if c.openapi else None
        for kw in ("anyOf", "oneOf"):
            branches = s.get(kw)
            if not isinstance(branches, list):
                continue
            if isinstance(disc, dict) and isinstance(disc.get("propertyName"), str) and self._discriminate(s, kw, disc):
                continue
            ts = [self.sub(kw, i) for i in range(len(branches))]
            for t in ts:
                self.inplace(t)
            self.open("do")
            if kw == "anyOf":
                self.w("local any = false")
                self.open("repeat")
                for t in ts:
                    self.open("do")
                    self.w("local eb = ev and {} or nil")
                    self.open(f"if F[{t}](v, d, false, eb) then")
                    self.w("any = true")
                    self.w("if not eb then break end")
                    self.w("merge(ev, eb)")
                    self.close()
                    self.close()
                self.close("until true")
                self.open("if not any then")
                self.fail("anyOf", "must match a schema in anyOf")
                self.close()
            else:
                self.w("local count = 0")
                for t in ts:
                    self.open("do")
                    self.w("local eb = ev and {} or nil")
                    self.open(f"if F[{t}](v, d, false, eb) then")
                    self.w("count = count + 1")
                    self.w("if eb then merge(ev, eb) end")
                    self.close()
                    self.close()
                self.open("if count ~= 1 then")
                self.fail("oneOf", "must match exactly one schema in oneOf")
                self.close()
            self.close()
        if "not" in s:
            t = self.sub("not")
            self.inplace(t)
            self.open(f"if F[{t}](v, d, false, nil) then")
            self.fail("not", "must NOT be valid against the schema in not")
            self.close()
        if "if" in s and not c.d4 and "then" not in s and "else" not in s:
            # No effect on validity, but its annotations count for unevaluated*.
            ti = self.sub("if")
            self.inplace(ti)
            self.open("if ev then")
            self.w("local eb = {}")
            self.w(f"if F[{ti}](v, d, false, eb) then merge(ev, eb) end")
            self.close()
        if "if" in s and not c.d4 and ("then" in s or "else" in s):
            ti = self.sub("if")
            self.inplace(ti)
            self.open("do")
            self.w("local eb = ev and {} or nil")
            self.open(f"if F[{ti}](v, d, false, eb) then")
            self.w("if eb then merge(ev, eb) end")
            if "then" in s:
                t = self.sub("then")
                self.inplace(t)
                self.open(f"if not F[{t}](v, d, c, ev) then")
                self.child_failed()
                self.close()
            if "else" in s:
                self.close("else")
                self.ind += 1
                t = self.sub("else")
                self.inplace(t)
                self.open(f"if not F[{t}](v, d, c, ev) then")
                self.child_failed()
                self.close()
            self.close()
            self.close()

    def _discriminate(self, s: dict, kw: str, disc: dict) -> bool:
        """oneOf/anyOf with an OpenAPI discriminator: dispatch on the tag and
        validate only the chosen branch, with its own errors."""
        prop = disc["propertyName"]
        mapping: Dict[str, int] = {}
        branches = s[kw]
        by_ref: Dict[str, int] = {}
        for i, b in enumerate(branches):
            if isinstance(b, dict) and isinstance(b.get("$ref"), str):
                by_ref[b["$ref"]] = i
                name = b["$ref"].rsplit("/", 1)[-1]
                mapping.setdefault(name, i)
        explicit = disc.get("mapping") if isinstance(disc.get("mapping"), dict) else {}
        for tag, ref in explicit.items():
            if ref in by_ref:
                mapping[tag] = by_ref[ref]
            elif isinstance(ref, str) and ref.rsplit("/", 1)[-1] in mapping:
                mapping[tag] = mapping[ref.rsplit("/", 1)[-1]]
        if not mapping:
            self.c.problem("GW073", f"discriminator on {kw} has no usable mapping (branches are not $refs); "
                           f"{kw} is validated without it", self.loc.child("discriminator"), WARNING)
            return False
        self.open("do")
        self.w(f"local tag = getmetatable(v) == OBJ and v[{lua_str(prop)}]")
        for idx, tag in enumerate(sorted(mapping)):
            t = self.sub(kw, mapping[tag])
            self.inplace(t)
            self.w(f"{'if' if idx == 0 else 'elseif'} tag == {lua_str(tag)} then")
            self.ind += 1
            self.open(f"if not F[{t}](v, d, c, ev) then")
            self.child_failed()
            self.close()
            self.ind -= 1
        self.w("else")
        self.ind += 1
        self.w("P[d + 1] = " + lua_str(prop))
        allowed = ", ".join(sorted(mapping))
        self.fail("discriminator", f"'{prop}' must be one of: {allowed}", depth="d + 1")
        self.close()
        self.close()
        return True

    # -- unevaluated -----------------------------------------------------------------
    def kw_unevaluated(self, s: dict) -> None:
        if "unevaluatedProperties" in s:
            u = s["unevaluatedProperties"]
            self.open("if ev and getmetatable(v) == OBJ then")
            self.open("for i = 1, #v do")
            self.w("local k = v[i]")
            self.open("if not ev[k] then")
            if u is False:
                self.w("P[d + 1] = k")
                self.fail("unevaluatedProperties", "must NOT have unevaluated properties", depth="d + 1")
            elif u is not True and u != {}:
                t = self.sub("unevaluatedProperties")
                self.call_child(t, "v[k]", "k")
            self.close()
            self.close()
            self.close()
        if "unevaluatedItems" in s:
            u = s["unevaluatedItems"]
            self.open("if ev and getmetatable(v) == ARR and not ev[ALL] then")
            self.open("for i = 1, #v do")
            self.open("if not ev[i] then")
            if u is False:
                self.w("P[d + 1] = i")
                self.fail("unevaluatedItems", "must NOT have unevaluated items", depth="d + 1")
            elif u is not True and u != {}:
                t = self.sub("unevaluatedItems")
                self.call_child(t, "v[i]", "i")
            self.close()
            self.close()
            self.close()
        # Everything is evaluated now, as far as an enclosing schema is concerned.
        self.open("if ev0 and ev then")
        self.w("merge(ev0, ev)")
        if "unevaluatedProperties" in s:
            self.w("if getmetatable(v) == OBJ then for i = 1, #v do ev0[v[i]] = true end end")
        if "unevaluatedItems" in s:
            self.w("if getmetatable(v) == ARR then ev0[ALL] = true end")
        self.close()
