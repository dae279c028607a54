"""Run compiled schemas on JSON texts inside the nginx worker (batched)."""
from __future__ import annotations

import json
from typing import Any, List, Sequence

from gwc.validation import compile_schema
from gwc.validation.lua_text import lua_str

_CHUNK = """
local V = require "gwc.validation"
local S = V.rt.S
local results = {}
local schemas = { %(schemas)s }
local texts = { %(texts)s }
local which = { %(which)s }
local fns = {}
for i, src in ipairs(schemas) do
    fns[i] = assert(loadstring(src, "=schema" .. i))()
end
for i, text in ipairs(texts) do
    local v, kind, detail = V.decode(text, %(depth)d, %(d4)s)
    if v == nil then
        results[i] = { decode = kind, detail = detail }
    else
        S.n, S.max, S.full, S.errs = 0, 100, false, nil
        local ok, valid = pcall(fns[which[i]], v, 0, true, nil)
        if not ok then
            results[i] = { error = tostring(valid) }
        else
            local probe = fns[which[i]](v, 0, false, nil)
            results[i] = { valid = valid, probe = probe, errors = S.errs or {} }
        end
    end
end
return results
"""


def run(lua, schemas: Sequence[Any], cases: Sequence[tuple], dialect: str = "oas31", depth: int = 64,
        raw: bool = False) -> List[dict]:
    """cases: (schema index, instance) pairs; instance is JSON text when raw, else a value."""
    sources = []
    for s in schemas:
        src, problems = compile_schema(s, dialect, openapi=True)
        assert not problems, problems
        sources.append(src)
    texts = [c[1] if raw else json.dumps(c[1], ensure_ascii=False) for c in cases]
    chunk = _CHUNK % {
        "schemas": ", ".join(lua_str(s) for s in sources),
        "texts": ", ".join(lua_str(t) for t in texts),
        "which": ", ".join(str(c[0] + 1) for c in cases),
        "depth": depth,
        "d4": "true" if dialect == "oas30" else "false",
    }
    out = lua.run(chunk)
    for r in out:
        if "valid" in r:
            assert r["valid"] == r["probe"], r
    return out


def valid(lua, schema: Any, instances: Sequence[Any], dialect: str = "oas31", raw: bool = False) -> List[Any]:
    res = run(lua, [schema], [(0, i) for i in instances], dialect, raw=raw)
    return [r.get("valid", r.get("decode") or r.get("error")) for r in res]
