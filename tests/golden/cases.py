"""Golden cases: each is a spec whose whole output directory is checked in.

`scripts/regen-golden` (or `python -m tests.golden.cases --regenerate`)
rewrites the expected directories.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Dict, List, Tuple

GOLDEN_DIR = Path(__file__).resolve().parent
REPO_ROOT = GOLDEN_DIR.parent.parent
OPTIONS = ["--target", "nginx-lua", "--install-dir", "/etc/nginx/gwc"]

# name -> spec path
CASES: Dict[str, Path] = {
    "petstore": REPO_ROOT / "examples" / "petstore" / "api.yaml",
    "upstream-options": GOLDEN_DIR / "upstream-options" / "api.yaml",
    "access-policy": GOLDEN_DIR / "access-policy" / "api.yaml",
    "traffic": GOLDEN_DIR / "traffic" / "api.yaml",
    "traffic-native": GOLDEN_DIR / "traffic-native" / "api.yaml",
    "waf": GOLDEN_DIR / "waf" / "api.yaml",
    "edge": GOLDEN_DIR / "edge" / "api.yaml",
}


def expected_dir(name: str) -> Path:
    return GOLDEN_DIR / name / "expected"


def build_args(name: str, out: Path) -> List[str]:
    return ["build", str(CASES[name]), "-o", str(out), *OPTIONS]


def is_runtime_copy(rel: str) -> bool:
    """The runtime Lua copied verbatim from lua/: checked against lua/, not stored.
    Generated Lua (lua/gwc/data/, the request validators) is golden output."""
    return rel.startswith("lua/") and rel.endswith(".lua") and not rel.startswith("lua/gwc/data/")


def tree(root: Path, generated_only: bool = False) -> Dict[str, bytes]:
    out = {}
    # A built output's files are those of its live generation.
    live = root / "current" if (root / "current").is_dir() else root
    for p in sorted(live.rglob("*")):
        rel = p.relative_to(live).as_posix()
        if p.is_file() and not (generated_only and is_runtime_copy(rel)):
            out[rel] = p.read_bytes()
    return out


def regenerate() -> List[Tuple[str, Path]]:
    import subprocess

    done = []
    for name in CASES:
        target = expected_dir(name)
        tmp = GOLDEN_DIR / name / ".regen"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "gwc.cli", *build_args(name, tmp)], check=True, cwd=REPO_ROOT)
        shutil.rmtree(target, ignore_errors=True)
        generated = tree(tmp, generated_only=True)
        for rel, data in generated.items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(data)
        shutil.rmtree(tmp)
        done.append((name, target))
    return done


if __name__ == "__main__":
    if "--regenerate" not in sys.argv:
        sys.exit("usage: python -m tests.golden.cases --regenerate")
    for name, target in regenerate():
        print(f"{name}: {target.relative_to(REPO_ROOT)}")
