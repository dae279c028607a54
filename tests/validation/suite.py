"""The official JSON-Schema-Test-Suite, taken from the jsonschema sdist at test time.

Not vendored: `pip download` fetches the sdist of the installed jsonschema
version into the cache directory ($GWC_SUITE_CACHE, else ~/.cache/gwc).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from gwc.validation import compile_schema
from gwc.validation.lua_text import lua_str

DRAFTS = {"draft4": "oas30", "draft2020-12": "oas31"}
# Optional files that cover what the gateway promises (formats it checks,
# big numbers, ECMA-262 regex semantics).
OPTIONAL = {
    "draft4": ["optional/bignum.json", "optional/ecmascript-regex.json", "optional/zeroTerminatedFloats.json",
               "optional/non-bmp-regex.json"]
    + [f"optional/format/{f}.json" for f in ("date-time", "email", "hostname", "ipv4", "ipv6", "uri")],
    "draft2020-12": ["optional/bignum.json", "optional/ecmascript-regex.json", "optional/float-overflow.json",
                     "optional/non-bmp-regex.json"]
    + [f"optional/format/{f}.json" for f in ("date-time", "date", "time", "email", "hostname", "ipv4", "ipv6", "uri", "uuid")],
}


def cache_dir() -> Path:
    d = os.environ.get("GWC_SUITE_CACHE") or str(Path.home() / ".cache" / "gwc")
    return Path(d)


def suite_root() -> Path:
    from importlib.metadata import version

    import jsonschema  # noqa: F401  (the suite version follows the installed jsonschema)

    ver = version("jsonschema")
    base = cache_dir()
    root = base / f"jsonschema-{ver}" / "json" / "tests"
    if root.is_dir() and (root.parent / "remotes").is_dir():
        return root
    base.mkdir(parents=True, exist_ok=True)
    sdist = base / f"jsonschema-{ver}.tar.gz"
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                        f"jsonschema=={ver}", "-d", str(base)], check=True, capture_output=True)
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if ("/json/tests/" in m.name or "/json/remotes/" in m.name) and m.isfile()]
        tar.extractall(base, members=members)
    return root


@dataclass(frozen=True)
class Case:
    id: str
    draft: str
    schema: Any
    data: Any
    valid: bool


@dataclass
class Group:
    id: str
    draft: str
    schema: Any
    cases: List[Case]


def groups() -> Iterator[Group]:
    root = suite_root()
    for draft in DRAFTS:
        files = sorted(p.name for p in (root / draft).glob("*.json")) + OPTIONAL[draft]
        for name in files:
            path = root / draft / name
            if not path.exists():
                continue
            for g in json.loads(path.read_text()):
                gid = f"{draft}/{name}::{g['description']}"
                cases, seen = [], set()
                for t in g["tests"]:
                    cid = f"{gid}::{t['description']}"
                    while cid in seen:
                        cid += "'"
                    seen.add(cid)
                    cases.append(Case(cid, draft, g["schema"], t["data"], t["valid"]))
                yield Group(gid, draft, g["schema"], cases)


_REMOTES: Optional[Dict[str, Any]] = None


def remotes() -> Dict[str, Any]:
    """The suite's remotes/ folder, served as http://localhost:1234/ without a network."""
    global _REMOTES
    if _REMOTES is None:
        base = suite_root().parent / "remotes"
        _REMOTES = {
            "http://localhost:1234/" + p.relative_to(base).as_posix(): json.loads(p.read_text())
            for p in sorted(base.rglob("*.json"))
        }
        # The draft metaschemas, from the jsonschema_specifications package that
        # jsonschema depends on, so "$ref": the metaschema resolves offline too.
        import jsonschema_specifications

        spec_dir = Path(jsonschema_specifications.__file__).parent / "schemas"
        for sub in ("draft4", "draft202012"):
            for p in sorted(f for f in (spec_dir / sub).rglob("*") if f.is_file()):
                data = json.loads(p.read_text())
                ident = data.get("$id") or data.get("id")
                if isinstance(ident, str):
                    _REMOTES[ident.rstrip("#")] = data
    return _REMOTES


def run_groups(lua, batch: List[Group]) -> Dict[str, str]:
    """Case id -> "" when the Lua validator agrees with the suite, else why not."""
    out: Dict[str, str] = {}
    chunks = []
    index: List[Tuple[Group, Optional[str]]] = []
    for g in batch:
        d4 = DRAFTS[g.draft] == "oas30"
        try:
            src, problems = compile_schema(g.schema, DRAFTS[g.draft], remotes=remotes())
        except Exception as exc:  # a crash is a bug: report it per case
            for c in g.cases:
                out[c.id] = f"compiler crashed: {type(exc).__name__}: {exc}"
            continue
        if problems:
            for c in g.cases:
                out[c.id] = "build error: " + "; ".join(f"{code} {msg}" for code, msg, _ in problems)
            continue
        datas = ", ".join(lua_str(json.dumps(c.data)) for c in g.cases)
        chunks.append(
            "do\n"
            f"  local fn, cerr = loadstring({lua_str(src)}, '=schema')\n"
            "  local res = {}\n"
            "  if not fn then res = cerr else\n"
            "    local f = fn()\n"
            f"    for _, text in ipairs({{ {datas} }}) do\n"
            f"      local v, kind = V.decode(text, 1000, {'true' if d4 else 'false'})\n"
            "      if v == nil then res[#res + 1] = 'decode:' .. tostring(kind) else\n"
            "        local ok1, a = pcall(f, v, 0, false, nil)\n"
            "        S.n, S.max, S.full, S.errs = 0, 100, false, nil\n"
            "        local ok2, b = pcall(f, v, 0, true, nil)\n"
            "        if not ok1 then res[#res + 1] = 'error:' .. tostring(a)\n"
            "        elseif not ok2 then res[#res + 1] = 'error:' .. tostring(b)\n"
            "        elseif a ~= b then res[#res + 1] = 'modes disagree'\n"
            "        elseif b ~= (S.n == 0) then res[#res + 1] = 'error count disagrees'\n"
            "        else res[#res + 1] = a end\n"
            "      end\n"
            "    end\n"
            "  end\n"
            "  out[#out + 1] = res\n"
            "end\n"
        )
        index.append((g, None))
    if chunks:
        code = ("local V = require 'gwc.validation'\nlocal S = V.rt.S\nlocal out = {}\n"
                + "".join(chunks) + "return out\n")
        results = lua.run(code)
        for (g, _), res in zip(index, results):
            if isinstance(res, str):
                for c in g.cases:
                    out[c.id] = "Lua compile error: " + res
                continue
            for c, r in zip(g.cases, res):
                if r is True or r is False:
                    out[c.id] = "" if r == c.valid else f"expected {'valid' if c.valid else 'invalid'}"
                else:
                    out[c.id] = str(r)
    return out


def run_all(lua, batch_size: int = 60) -> Tuple[Dict[str, str], List[Case]]:
    results: Dict[str, str] = {}
    cases: List[Case] = []
    batch: List[Group] = []
    for g in groups():
        cases.extend(g.cases)
        batch.append(g)
        if len(batch) >= batch_size:
            results.update(run_groups(lua, batch))
            batch = []
    if batch:
        results.update(run_groups(lua, batch))
    return results, cases


if __name__ == "__main__":  # python tests/validation/suite.py: print every failure
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "compiler"))
    from support.lua_runner import LuaRunner

    with LuaRunner() as runner:
        res, cases = run_all(runner)
    bad = {k: v for k, v in res.items() if v}
    for k in sorted(bad):
        print(f"{k}\n    {bad[k]}")
    print(f"{len(cases)} cases, {len(cases) - len(bad)} pass, {len(bad)} fail")
