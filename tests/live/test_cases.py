"""Every case in cases/*.yaml against a real nginx running the built gateway."""
import pytest

import harness

pytestmark = pytest.mark.live

CASES = harness.load_cases()


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_case(case: harness.Case, gateways: harness.GatewayPool) -> None:
    gw = gateways.get(case.spec)
    result, expect = harness.run_case(case, gw)
    harness.check(case, result, expect)


def test_every_spec_has_cases() -> None:
    assert {c.spec for c in CASES} == set(harness.SPEC_VARIANTS)
