"""Stage 6: verify a built output directory.

`nginx -t` does not run init_by_lua, so it cannot see broken generated data;
the manifest's file hashes catch an output edited or damaged after the build.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import List

from .diagnostics import Diagnostic
from .runtime import Runtime, nginx_test


def check_manifest(out_dir: Path) -> List[Diagnostic]:
    manifest_path = Path(out_dir) / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [Diagnostic("GW060", f"no readable manifest.json: {exc}", str(manifest_path))]
    out = []
    for name, expected in sorted(files.items()):
        path = Path(out_dir) / name
        try:
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            out.append(Diagnostic("GW060", f"{name} is missing", str(path)))
            continue
        if actual != expected:
            out.append(Diagnostic("GW060", f"{name} was modified after the build (sha256 differs from manifest.json); rebuild instead of editing", str(path)))
    return out


def verify(out_dir: Path, runtime: Runtime) -> List[Diagnostic]:
    diags = check_manifest(out_dir)
    ok, output = nginx_test(runtime, out_dir)
    if not ok:
        diags.append(Diagnostic("GW060", f"nginx -t failed ({runtime.description}): {output}", str(Path(out_dir) / "nginx.conf")))
    return diags
