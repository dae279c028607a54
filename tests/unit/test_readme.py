"""The README's example spec is valid and builds."""
import re
import subprocess
import sys


def test_readme_example_builds(repo_root, tmp_path):
    readme = (repo_root / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    assert blocks, "the README shows an example spec"
    (tmp_path / "api.yaml").write_text(blocks[0])
    proc = subprocess.run([sys.executable, "-m", "gwc.cli", "build", "api.yaml", "-o", "out", "--target", "nginx-lua"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "nginx.conf").is_file()
