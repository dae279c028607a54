"""`pip install .` builds a real wheel that works from any directory."""
import subprocess
import sys
import venv
import zipfile

import pytest

from golden.cases import expected_dir, tree


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_builds_the_example(repo_root, tmp_path):
    dist = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(repo_root)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheel = next(dist.glob("gwc-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("gwc/_data/templates/http.conf.j2", "gwc/_data/lua/gwc/router.lua", "gwc/_data/schemas/x-gateway.json"):
        assert shipped in names

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    pip = env_dir / "bin" / "pip"
    proc = subprocess.run([str(pip), "install", "--quiet", "--disable-pip-version-check", str(wheel)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    spec = repo_root / "examples" / "petstore" / "api.yaml"
    proc = subprocess.run([str(env_dir / "bin" / "gwc"), "build", str(spec), "-o", "out", "--target", "nginx-lua",
                           "--install-dir", "/etc/nginx/gwc"], cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert tree(elsewhere / "out", generated_only=True) == tree(expected_dir("petstore")), "the wheel must produce the same output as the source tree"
