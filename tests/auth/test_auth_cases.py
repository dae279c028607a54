"""Every case in cases/*.yaml against a real nginx running the built gateway,
then the JSON access log's reason and consumer fields for the cases that
declared them."""
import pytest

import auth_runner

pytestmark = pytest.mark.live

CASES = auth_runner.load_cases()


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_case(case, gateways, mint, pki):
    gw = gateways.get(case.spec)
    sent = auth_runner.send(gw, case.request, mint, pki["contexts"], error_log=case.expect.get("error_log"))
    auth_runner.check(case.name, gw, sent, case.expect, case.request.get("method", "GET"),
                      record=not case.xfail)


def test_zz_access_log_reasons(gateways):
    """Runs after the cases: each declared reason/consumer is in the access log."""
    errs = []
    checked = 0
    for gw in list(gateways.gateways.values()):
        if not gw.logged:
            continue
        entries = gw.access_entries(gw.logged)
        for rid, want in gw.logged.items():
            entry = entries.get(rid)
            if entry is None:
                errs.append(f"{gw.spec}: {want['_case']}: request {rid} not in the access log")
                continue
            checked += 1
            for k, v in want.items():
                if k != "_case" and entry.get(k) != v:
                    errs.append(f"{gw.spec}: {want['_case']}: access log {k}={entry.get(k)!r}, expected {v!r}")
    if checked == 0 and not errs:
        pytest.skip("no case declaring a reason or consumer ran")
    assert not errs, "\n".join(errs)

