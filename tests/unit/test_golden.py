"""Golden output directories, and byte-identical rebuilds."""
import subprocess
import sys

import pytest

from golden.cases import CASES, build_args, expected_dir, tree


def _build(name, out, cwd):
    proc = subprocess.run([sys.executable, "-m", "gwc.cli", *build_args(name, out)], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return tree(out)


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_matches_golden(name, tmp_path):
    actual = _build(name, tmp_path / "out", tmp_path)
    expected = tree(expected_dir(name))
    assert sorted(actual) == sorted(expected), "file list differs; run scripts/regen-golden and review"
    for path in expected:
        assert actual[path] == expected[path], f"{path} differs from the golden copy; run scripts/regen-golden and review"


@pytest.mark.parametrize("name", sorted(CASES))
def test_rebuild_is_byte_identical_from_another_directory(name, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _build(name, tmp_path / "a" / "out", tmp_path / "a")
    second = _build(name, tmp_path / "b" / "out", tmp_path / "b")
    assert first == second
