"""Lua literals for generated code: deterministic and injection-proof."""
from __future__ import annotations

import math
import re
from typing import Any

_SAFE = set(range(0x20, 0x7F)) - {ord('"'), ord("\\")}
_BYTE = [chr(b) if b in _SAFE else "\\%03d" % b for b in range(256)]
_BYTE[ord('"')] = '\\"'
_BYTE[ord("\\")] = "\\\\"
_NEEDS_ESCAPE = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')


def lua_str(value: str) -> str:
    """A double-quoted Lua string; every byte outside printable ASCII is \\ddd."""
    if not _NEEDS_ESCAPE.search(value):  # most strings: printable ASCII, copied as is
        return '"' + value + '"'
    return '"' + "".join([_BYTE[b] for b in value.encode("utf-8", "surrogatepass")]) + '"'


def lua_num(value) -> str:
    if isinstance(value, bool):
        raise TypeError("bool is not a number")
    if isinstance(value, int):
        if abs(value) < 2 ** 53:
            return str(value)
        return repr(float(value)) if math.isfinite(float(value)) else ("math.huge" if value > 0 else "-math.huge")
    if math.isinf(value):
        return "math.huge" if value > 0 else "-math.huge"
    if math.isnan(value):
        return "(0/0)"
    return repr(value)


def lua_value(value: Any) -> str:
    """A JSON value in the runtime representation (OBJ/ARR metatables, NULL)."""
    if value is None:
        return "NULL"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return lua_num(value)
    if isinstance(value, str):
        return lua_str(value)
    if isinstance(value, list):
        return "setmetatable({" + ", ".join(lua_value(v) for v in value) + "}, ARR)"
    if isinstance(value, dict):
        keys = list(value)
        parts = [f"[{lua_str(k)}] = {lua_value(value[k])}" for k in keys] + [lua_str(k) for k in keys]
        return "setmetatable({" + ", ".join(parts) + "}, OBJ)"
    raise TypeError(f"not a JSON value: {type(value).__name__}")
