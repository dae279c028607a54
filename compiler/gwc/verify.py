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
from .waf import CRS_RULES_DIR, MODSECURITY_MODULE


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


def check_waf_runtime(out_dir: Path, runtime: Runtime) -> List[Diagnostic]:
    """GW097 when the output uses the WAF and the runtime lacks ModSecurity or the CRS."""
    conf = Path(out_dir) / "nginx.conf"
    try:
        uses_waf = "modsecurity on;" in conf.read_text(encoding="utf-8")
    except OSError:
        return []  # check_manifest reports the missing file
    if not uses_waf or runtime.kind != "native":
        return []  # a container's nginx -t answers for itself
    missing = []
    if runtime.target == "nginx-lua" and not Path(MODSECURITY_MODULE).is_file():
        missing.append(f"the ModSecurity module {MODSECURITY_MODULE} (Debian: libnginx-mod-http-modsecurity)")
    if not Path(CRS_RULES_DIR).is_dir():
        missing.append(f"the OWASP CRS in {CRS_RULES_DIR} (Debian: modsecurity-crs)")
    if not missing:
        return []
    return [Diagnostic("GW097", f"x-gateway.waf needs {' and '.join(missing)}; run scripts/install-runtime", str(conf))]


def verify(out_dir: Path, runtime: Runtime) -> List[Diagnostic]:
    diags = check_manifest(out_dir)
    waf = check_waf_runtime(out_dir, runtime)
    if waf:
        return diags + waf
    ok, output = nginx_test(runtime, out_dir)
    if not ok and 'unknown directive "modsecurity' in output:
        diags.append(Diagnostic("GW097", f"x-gateway.waf needs the ModSecurity module, which {runtime.description} lacks: {output}",
                                str(Path(out_dir) / "nginx.conf")))
    elif not ok:
        diags.append(Diagnostic("GW060", f"nginx -t failed ({runtime.description}): {output}", str(Path(out_dir) / "nginx.conf")))
    return diags
