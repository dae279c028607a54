"""Build-time security checks as data (cases/build_cases.yaml), through the real `gwc build`."""
from __future__ import annotations

import pytest
import yaml

import auth_runner

CASES = yaml.safe_load((auth_runner.CASES_DIR / "build_cases.yaml").read_text(encoding="utf-8"))["build"]


def _params():
    out = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case["xfail"])] if case.get("xfail") else []
        out.append(pytest.param(case, id=case["name"], marks=marks))
    return out


@pytest.mark.parametrize("case", _params())
def test_build(case, tmp_path):
    (tmp_path / "api.yaml").write_text(case["spec"], encoding="utf-8")
    for name, text in (case.get("files") or {}).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    proc = auth_runner.gwc_cli("build", str(tmp_path / "api.yaml"), "-o", str(tmp_path / "out"), "--target", "nginx-lua")
    expect = case["expect"]
    output = proc.stderr + proc.stdout
    assert proc.returncode == expect["exit"], f"exit {proc.returncode}, expected {expect['exit']}:\n{output}"
    for text in expect.get("stderr", []):
        assert text in proc.stderr, f"{text!r} not in the diagnostics:\n{proc.stderr}"
    for text in expect.get("stderr_lacks", []):
        assert text not in output, f"{text!r} must not appear in the output:\n{output}"
