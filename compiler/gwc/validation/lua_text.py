"""Lua literals for generated code: deterministic and injection-proof."""
from __future__ import annotations

import math
from typing import Any

_SAFE = set(range(0x20, 0x7F)) - {ord('"'), ord("\\")}


def lua_str(value: str) -> str:
    """A double-quoted Lua string; every byte outside printable ASCII is \\ddd."""
    out = ['"']
    for b in value.encode("utf-8", "surrogatepass"):
        if b in _SAFE:
            out.append(chr(b))
        elif b == ord('"'):
            out.append('\\"')
        elif b == ord("\\"):
            out.append("\\\\")
        else:
            out.append("\\%03d" % b)
    out.append('"')
    return "".join(out)


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
