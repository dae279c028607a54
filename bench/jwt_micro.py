"""Micro-benchmark of the JWT runtime inside a real nginx worker (not a test; timing is only printed).

For each algorithm it times, with os.clock() inside the worker:
  raw    - the signature check alone (gwc.crypto key:verify on a pre-split token)
  cold   - verifier:verify on N distinct tokens (decode, header, key lookup, crypto, claims, cache insert)
  nocache- the same with the token cache disabled
  hit    - verifier:verify cycling through the N already verified tokens
  hit1   - verifier:verify on one already verified token, over and over
Then the whole table again in a fresh nginx with the JIT compiler off (code entered once per request
runs largely interpreted, so this bounds that case).

Usage: python bench/jwt_micro.py [N] [rounds]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compiler"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "lua"))

from jose_util import claims, jwks_of, lua_value, mint, public_jwk  # noqa: E402
from support.lua_runner import LuaRunner  # noqa: E402

ALGS = ["HS256", "RS256", "PS256", "ES256", "EdDSA"]

CHUNK = """
local jwks = require "gwc.jwks"
local jwt = require "gwc.jwt"
local clock = os.clock
local input = %s
local set = assert(jwks.new{ name = "bench", keys = input.jwks })
if input.interp then
    -- A request enters verify() from C once, so much of its code runs in the
    -- interpreter: a run with the JIT compiler off bounds that case.
    jit.off()
    jit.flush()
end
local out = {}
for alg, tokens in pairs(input.tokens) do
    local n = #tokens
    local best = {}
    local function keep(name, v)
        if not best[name] or v < best[name] then best[name] = v end
    end
    for round = 1, input.rounds do
        -- raw crypto: the same work verify() does after parsing
        local key = set:get(alg == "HS256" and "hmac-0" or alg == "ES256" and "p256-0"
            or alg == "EdDSA" and "ed25519-0" or "rsa-0", alg)
        local b64 = require("ngx.base64").decode_base64url
        local sigs, lens = {}, {}
        for i = 1, n do
            local t = tokens[i]
            local d2 = t:find(".", t:find(".", 1, true) + 1, true)
            sigs[i] = b64(t:sub(d2 + 1))
            lens[i] = d2 - 1
        end
        local t0 = clock()
        for i = 1, n do
            assert(key:verify(alg, tokens[i], lens[i], sigs[i]))
        end
        keep("raw", (clock() - t0) / n * 1e6)

        local v = assert(jwt.new{ keys = set, algorithms = { alg }, issuer = "https://id.example.com/",
                                  audiences = { "pets" } })
        t0 = clock()
        for i = 1, n do
            assert(v:verify(tokens[i]))
        end
        keep("cold", (clock() - t0) / n * 1e6)

        local nc = assert(jwt.new{ keys = set, algorithms = { alg }, issuer = "https://id.example.com/",
                                   audiences = { "pets" }, cache_size = 0 })
        t0 = clock()
        for i = 1, n do
            assert(nc:verify(tokens[i]))
        end
        keep("nocache", (clock() - t0) / n * 1e6)

        -- Cycle through the n tokens the cold pass cached: every call is a hit
        -- on a different key, as on a busy gateway.
        local reps = 20
        t0 = clock()
        for _ = 1, reps do
            for i = 1, n do
                v:verify(tokens[i])
            end
        end
        keep("hit", (clock() - t0) / (n * reps) * 1e6)

        -- The same token over and over (the best case: one hot cache slot).
        local hot = tokens[1]
        t0 = clock()
        for _ = 1, n * reps do
            v:verify(hot)
        end
        keep("hit1", (clock() - t0) / (n * reps) * 1e6)

    end
    out[alg] = best
end
if input.interp then
    jit.on()
end
return out
"""


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    keys = jwks_of(*(public_jwk(f) for f in ("hmac", "rsa", "p256", "ed25519")))
    t0 = time.monotonic()
    tokens = {alg: [mint(alg, claims(jti=f"{alg}-{i}")) for i in range(n)] for alg in ALGS}
    print(f"minted {n} tokens per algorithm in {time.monotonic() - t0:.1f}s; {rounds} rounds, best shown")
    for interp in (False, True):
        with LuaRunner() as runner:
            result = runner.run(CHUNK % lua_value({"jwks": keys, "tokens": tokens, "rounds": rounds,
                                                   "interp": interp}), timeout=600)
            errors = runner.lua_errors()
        print("\nJIT off (interpreter)" if interp else "\nJIT on")
        print(f"{'alg':8} {'raw µs':>9} {'cold µs':>9} {'nocache µs':>11} {'hit µs':>8} {'hit1 µs':>8} "
              f"{'cold-raw µs':>12}")
        for alg in ALGS:
            r = result[alg]
            print(f"{alg:8} {r['raw']:9.2f} {r['cold']:9.2f} {r['nocache']:11.2f} {r['hit']:8.3f} "
                  f"{r['hit1']:8.3f} {r['cold'] - r['raw']:12.2f}")
        if errors:
            print("error log:\n" + errors)


if __name__ == "__main__":
    main()
