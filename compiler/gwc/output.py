"""Writing a rendered output to its directory.

Each build is written as a new generation, DIR/.generations/<id>/, and made
live by one rename of the symlink DIR/current; DIR/nginx.conf, conf.d/, lua/
and manifest.json are links through current. Every path under DIR exists at
every moment, and a failed build leaves the previous output untouched.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .diagnostics import Diagnostic
from .render import KEYS_FILE

# The generations of an output, and the link that names the live one.
GENERATIONS = ".generations"
CURRENT = "current"
# Never moved by a build: the running master's pid file and logs, its temp files.
STATE_DIRS = ("logs", "tmp")
KEYS_NEW = f".{KEYS_FILE}.new"
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def write_output(files: Dict[str, bytes], out_dir: Path, check: Optional[Callable[[Path], List[Diagnostic]]] = None) -> List[Diagnostic]:
    """Write files as a new generation of out_dir and make it live atomically;
    check, when given, vets the staged generation before anything changes.
    Returns diagnostics on failure."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file())):
        return [Diagnostic("GW050", f"{out_dir} exists and is not a gwc output directory; refusing to replace it")]
    if out_dir.is_dir():
        return _write_over(files, out_dir, check)
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=parent))
    except OSError as exc:
        return [Diagnostic("GW050", f"cannot create output directory {out_dir}: {exc.strerror or exc}")]
    try:
        (staging / GENERATIONS).mkdir()
        gen = _new_generation(staging / GENERATIONS)
        _fill(gen, files)
        problems = _checked(gen, check)
        if problems:
            shutil.rmtree(staging, ignore_errors=True)
            return problems
        if KEYS_FILE in files:
            (staging / KEYS_NEW).write_bytes(files[KEYS_FILE])
        _commit(staging, gen, files)
        os.chmod(staging, 0o755)
        os.rename(staging, out_dir)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        return [Diagnostic("GW050", f"cannot write output directory {out_dir}: {exc.strerror or exc}")]
    return []


def _write_over(files: Dict[str, bytes], out_dir: Path, check) -> List[Diagnostic]:
    gens = out_dir / GENERATIONS
    created = not gens.is_dir()
    try:
        gens.mkdir(exist_ok=True)
        lock = os.open(gens, os.O_RDONLY)
    except OSError as exc:
        return [Diagnostic("GW050", f"cannot write output directory {out_dir}: {exc.strerror or exc}")]
    try:
        # Two builds into one DIR would delete each other's generation.
        fcntl.flock(lock, fcntl.LOCK_EX)
        gen: Optional[Path] = None
        try:
            gen = _new_generation(gens)
            _fill(gen, files)
            problems = _checked(gen, check)
            if not problems and KEYS_FILE in files:
                (out_dir / KEYS_NEW).write_bytes(files[KEYS_FILE])
        except OSError as exc:
            problems = [Diagnostic("GW050", f"cannot write output directory {out_dir}: {exc.strerror or exc}")]
        if problems:
            # Leave DIR as it was.
            if gen is not None:
                shutil.rmtree(gen, ignore_errors=True)
            if created:
                shutil.rmtree(gens, ignore_errors=True)
            if (out_dir / KEYS_NEW).is_file():
                os.unlink(out_dir / KEYS_NEW)
            return problems
        try:
            _commit(out_dir, gen, files)
        except OSError as exc:
            return [Diagnostic("GW050", f"cannot complete output directory {out_dir}: {exc.strerror or exc}")]
        return []
    finally:
        os.close(lock)


def _new_generation(gens: Path) -> Path:
    gen = Path(tempfile.mkdtemp(prefix="gen-", dir=gens))
    os.chmod(gens, 0o755)
    os.chmod(gen, 0o755)
    return gen


def _fill(gen: Path, files: Dict[str, bytes]) -> None:
    for name, data in files.items():
        target = gen / name
        if name == KEYS_FILE:
            # The runtime finds keys.json beside lua/ after the kernel resolved
            # the links, i.e. here; operators edit the one at the top of DIR.
            target.symlink_to(f"../../{KEYS_FILE}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _checked(gen: Path, check) -> List[Diagnostic]:
    """Run check on the generation alone: `nginx -t` opens the logs and creates
    the temp dirs, so it gets its own, thrown away afterwards."""
    if check is None:
        return []
    scratch = [gen / name for name in STATE_DIRS]
    try:
        for path in scratch:
            path.mkdir()
        return check(gen)
    finally:
        for path in scratch:
            shutil.rmtree(path, ignore_errors=True)


def _commit(root: Path, gen: Path, files: Dict[str, bytes]) -> None:
    """Make gen the live generation of root: one rename of root/current."""
    _place_link(root, CURRENT, f"{GENERATIONS}/{gen.name}")
    # Only an output of an older gwc (real files and directories) or a change in
    # the set of top-level entries makes these do anything.
    names = sorted({name.split("/", 1)[0] for name in files} - {KEYS_FILE})
    for name in names:
        _place_link(root, name, f"{CURRENT}/{name}")
    if KEYS_FILE in files:
        os.replace(root / KEYS_NEW, root / KEYS_FILE)
    elif (root / KEYS_FILE).is_file():
        os.unlink(root / KEYS_FILE)
    for entry in root.iterdir():
        if entry.is_symlink() and os.readlink(entry).startswith(CURRENT + "/") and entry.name not in names:
            os.unlink(entry)
    for name in STATE_DIRS:
        (root / name).mkdir(exist_ok=True)
    for old in (root / GENERATIONS).iterdir():
        if old.name != gen.name:
            shutil.rmtree(old, ignore_errors=True)


def _place_link(root: Path, name: str, target: str) -> None:
    """Make root/name a symlink to target without a moment in which it is missing."""
    path = root / name
    if path.is_symlink() and os.readlink(path) == target:
        return
    new = root / f".{name}.new"
    if new.is_symlink() or new.exists():
        _remove(new)
    os.symlink(target, new)
    if path.is_dir() and not path.is_symlink():
        # rename() cannot put a link over a directory; exchanging them can.
        try:
            _exchange(new, path)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EINVAL):
                raise
            # No RENAME_EXCHANGE on this system or filesystem: the path is
            # missing between these two renames, once, on the first build.
            old = root / f".{name}.old"
            if old.is_symlink() or old.exists():
                _remove(old)
            os.rename(path, old)
            os.rename(new, path)
            new = old
        _remove(new)
        return
    os.replace(new, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): swap two paths atomically (Linux 3.15+, glibc 2.28+)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(a))
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(b))
