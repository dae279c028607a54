"""Micro-benchmark: CPU per validation of a ~1 KB petstore Pet body.

Runs inside a real nginx worker (tests/support/lua_runner.py) and prints
microseconds per operation for: the JSON decode alone, the generated
validator alone, both (what a request pays), and cjson.decode for scale.
CPU time is os.clock() of the worker, measured over many iterations after a
warm-up so LuaJIT has compiled the traces.

    python bench/validation_micro.py [--iterations N]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "compiler")]

import yaml
from gwc.validation import compile_schema
from gwc.validation.lua_text import lua_str
from support.lua_runner import LuaRunner


def pet_schema() -> dict:
    spec = yaml.safe_load((ROOT / "tests/live/specs/validation.yaml").read_text())
    schemas = spec["components"]["schemas"]
    return {"$ref": "#/components/schemas/Pet", "components": {"schemas": schemas}}


def pet_body() -> str:
    pet = {
        "name": "Rex",
        "category": {"id": 7, "name": "Dogs"},
        "photoUrls": [f"https://images.example.com/pets/rex/photo-{i}.jpg?size=large" for i in range(5)],
        "tags": [{"name": n} for n in ("good-boy", "vaccinated", "chipped", "indoor", "friendly", "small", "house-trained", "senior", "calm", "playful")],
        "status": "available",
        "born": "2019-04-12",
        "owner_email": "jane.doe@example.com",
        "weight": 12.75,
        "chip": "123e4567-e89b-12d3-a456-426614174000",
    }
    # Pretty-printed, as clients commonly send it: about 1 KB.
    return json.dumps(pet, indent=2)


CHUNK = """
local V = require "gwc.validation"
local cjson = require "cjson.safe"
local S = V.rt.S
local decode = V.decode
local fn = assert(loadstring(%(src)s, "=pet"))()
local body = %(body)s
local N = %(n)d
local function reset() S.n, S.max, S.full, S.errs = 0, 10, false, nil end
local v = decode(body, 64, false)
reset()
assert(fn(v, 1, true, nil), "the sample body must be valid")
local function time(f)
    for _ = 1, N / 10 do f() end -- warm-up: let LuaJIT compile
    collectgarbage()
    local t0 = os.clock()
    for _ = 1, N do f() end
    return (os.clock() - t0) / N * 1e6
end
return {
    bytes = #body,
    decode = time(function() decode(body, 64, false) end),
    validate = time(function() reset() fn(v, 1, true, nil) end),
    both = time(function() reset() fn(decode(body, 64, false), 1, true, nil) end),
    cjson = time(function() cjson.decode(body) end),
}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=200000)
    args = ap.parse_args()
    src, problems = compile_schema(pet_schema(), "oas31", openapi=True)
    assert not problems, problems
    body = pet_body()
    with LuaRunner() as runner:
        res = runner.run(CHUNK % {"src": lua_str(src), "body": lua_str(body), "n": args.iterations}, timeout=600)
    print(f"Pet body: {res['bytes']} bytes, {args.iterations} iterations, worker CPU per operation:")
    print(f"  decode (gwc.json_decode)    {res['decode']:7.2f} us")
    print(f"  validate (generated Lua)    {res['validate']:7.2f} us")
    print(f"  decode + validate           {res['both']:7.2f} us   (target <= 15 us)")
    print(f"  cjson.decode, for scale     {res['cjson']:7.2f} us")


if __name__ == "__main__":
    main()
