"""Golden output directories, and byte-identical rebuilds."""
import subprocess
import sys

import pytest

from golden.cases import CASES, REPO_ROOT, build_args, expected_dir, is_runtime_copy, tree


def _build(name, out, cwd):
    proc = subprocess.run([sys.executable, "-m", "gwc.cli", *build_args(name, out)], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return tree(out)


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_matches_golden(name, tmp_path):
    full = _build(name, tmp_path / "out", tmp_path)
    runtime = {rel: data for rel, data in full.items() if is_runtime_copy(rel)}
    sources = {"lua/" + p.relative_to(REPO_ROOT / "lua").as_posix(): p.read_bytes() for p in (REPO_ROOT / "lua").rglob("*.lua")}
    assert runtime == sources, "the output's runtime Lua must be the lua/ sources, byte for byte"
    actual = {rel: data for rel, data in full.items() if not is_runtime_copy(rel)}
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
