"""The official JSON-Schema-Test-Suite through the generated Lua, in real LuaJIT.

draft4 stands for the OpenAPI 3.0 Schema Object, draft2020-12 for OpenAPI
3.1. Each case runs twice (probe and collect mode) and both must agree with
the suite. The failing set must equal suite-skips.json exactly, so a newly
passing or newly failing case shows up here.
"""
import json
from pathlib import Path

import pytest

from .suite import run_all, suite_root

SKIPS = Path(__file__).with_name("suite-skips.json")


@pytest.mark.slow
def test_official_suite(lua, capsys):
    try:
        suite_root()
    except Exception as exc:  # noqa: BLE001 - no network and no cache: say so
        pytest.skip(f"JSON-Schema-Test-Suite unavailable (pip download of the jsonschema sdist failed: {exc})")
    results, cases = run_all(lua)
    failing = {cid: why for cid, why in results.items() if why}
    skips = json.loads(SKIPS.read_text())["skips"]
    passed = len(cases) - len(failing)
    with capsys.disabled():
        print(f"\nJSON-Schema-Test-Suite (draft4 + draft2020-12): {len(cases)} applicable, "
              f"{passed} passed ({100.0 * passed / len(cases):.2f}%), {len(skips)} listed as skipped")
    unexpected = {k: v for k, v in failing.items() if k not in skips}
    newly_passing = sorted(k for k in skips if k not in failing)
    assert not unexpected, "cases failing that suite-skips.json does not list:\n" + "\n".join(
        f"{k}: {v}" for k, v in sorted(unexpected.items()))
    assert not newly_passing, "cases in suite-skips.json that now pass (remove them):\n" + "\n".join(newly_passing)
    assert passed >= 0.99 * len(cases)
