"""Stage 5: render templates, copy the runtime Lua, write generated data.

Each build is written as a new generation, DIR/.generations/<id>/, and made
live by one rename of the symlink DIR/current; DIR/nginx.conf, conf.d/, lua/
and manifest.json are links through current. Every path under DIR exists at
every moment, and a failed build leaves the previous output untouched.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
from json.encoder import encode_basestring as _encode_str  # the C function when available
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import jinja2

from . import __version__, problems
from .diagnostics import Diagnostic
from .plan import Plan
from .resources import lua_dir, templates_dir
from .security import keys_data

NGINX_LUA_MODULES = (
    "/usr/lib/nginx/modules/ndk_http_module.so",
    "/usr/lib/nginx/modules/ngx_http_lua_module.so",
)
# The one URI the gateway reserves: nginx's error pages need a real URI.
ERROR_URI = "/_gwc/error"
# Matched against $request_uri, path part only. \x5c is a backslash.
ENCODED_SLASH_REGEX = {
    "reject": r"^[^?]*(%2[fF]|%5[cC]|\x5c)",
    "decode": r"^[^?]*(%5[cC]|\x5c)",
}
DEFAULT_INSTALL_DIR = "/etc/nginx/gwc"
# The API-key consumers, editable in a deployed output (see docs/auth.md).
KEYS_FILE = "keys.json"
_SAFE_WORD = re.compile(r"^[A-Za-z0-9._:\[\]/*+-]+$")
_SAFE_VARIABLE = re.compile(r"^\$[a-z0-9_]+$")
_UNSAFE_IN_STRING = re.compile(r"[\x00-\x1f\x7f\"\\$]")
_INSTALL_DIR = re.compile(r"^/[A-Za-z0-9._/-]*$")


class UnsafeValue(ValueError):
    """A value would change the meaning of the generated configuration."""


def ngx_str(value) -> str:
    text = str(value)
    if _UNSAFE_IN_STRING.search(text):
        raise UnsafeValue(f"unsafe value for the configuration: {text!r}")
    return f'"{text}"'


def ngx_word(value) -> str:
    text = str(value)
    if not _SAFE_WORD.match(text):
        raise UnsafeValue(f"unsafe word for the configuration: {text!r}")
    return text


def ngx_variable(value) -> str:
    text = str(value)
    if not _SAFE_VARIABLE.match(text):
        raise UnsafeValue(f"unsafe variable name: {text!r}")
    return text


def ngx_time(ms: int) -> str:
    ms = int(ms)
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(ngx_str=ngx_str, ngx_word=ngx_word, ngx_variable=ngx_variable, ngx_time=ngx_time)
    return env


@dataclass(frozen=True)
class RenderOptions:
    target: str = "nginx-lua"
    install_dir: str = DEFAULT_INSTALL_DIR
    foreground: bool = False  # logs to stdout/stderr, for `gwc run`


class _NotPlainJson(Exception):
    pass


def _indented(value, out: List[str], depth: int) -> None:
    """json.dumps(indent=1, sort_keys=True, ensure_ascii=False), byte for byte.

    With indent, json uses its pure-Python encoder, the largest part of
    rendering 10,000 routes; this writes the same text in half the time."""
    if isinstance(value, str):
        out.append(_encode_str(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise _NotPlainJson
        out.append(float.__repr__(value))
    elif isinstance(value, (list, tuple)):
        if not value:
            out.append("[]")
            return
        inner = "\n" + " " * (depth + 1)
        sep = "[" + inner
        for item in value:
            out.append(sep)
            sep = "," + inner
            _indented(item, out, depth + 1)
        out.append("\n" + " " * depth + "]")
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        if not all(type(k) is str for k in value):
            raise _NotPlainJson
        inner = "\n" + " " * (depth + 1)
        sep = "{" + inner
        for key in sorted(value):
            out.append(sep + _encode_str(key) + ": ")
            sep = "," + inner
            _indented(value[key], out, depth + 1)
        out.append("\n" + " " * depth + "}")
    else:
        raise _NotPlainJson


def _json_bytes(value) -> bytes:
    out: List[str] = []
    try:
        _indented(value, out, 0)
        text = "".join(out)
    except _NotPlainJson:  # non-finite floats, non-string keys, other types: json's own rules
        text = json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False)
    return (text + "\n").encode("utf-8")


def render_files(plan: Plan, options: RenderOptions) -> Dict[str, bytes]:
    """Every output file as relative path -> bytes. Raises UnsafeValue."""
    if not _INSTALL_DIR.match(options.install_dir):
        raise UnsafeValue(f"--install-dir must be an absolute path of letters, digits, '.', '_', '-' and '/': {options.install_dir!r}")
    env = environment()
    install_dir = options.install_dir.rstrip("/") or "/"
    common = dict(
        plan=plan,
        target=options.target,
        gwc_version=__version__,
        problem_body=problems.native_body,
        problem_details=problems.DETAILS,
        error_page_statuses=problems.ERROR_PAGE_STATUSES,
        error_uri=ERROR_URI,
        encoded_slash_regex=ENCODED_SLASH_REGEX[plan.gateway.routing.encoded_slashes],
        install_dir=install_dir,
        secret_env=_secret_env(plan),
        uses_jwks=any(s.jwt is not None for s in plan.gateway.security.schemes),
        uses_tls_fetch=_uses_tls_fetch(plan),
        ca_bundle=plan.gateway.nginx.ca_bundle,
    )
    files: Dict[str, bytes] = {}
    files["nginx.conf"] = env.get_template("nginx.conf.j2").render(
        **common,
        modules=NGINX_LUA_MODULES if options.target == "nginx-lua" else (),
        lua_root="$prefix/lua",
        error_log="/dev/stderr" if options.foreground else "logs/error.log",
        access_log="/dev/stdout" if options.foreground else "logs/access.log",
        access_log_buffered=not options.foreground,
    ).encode("utf-8")
    files["conf.d/gateway.conf"] = env.get_template("conf.d.gateway.conf.j2").render(
        **common,
        lua_root=f"{install_dir}/lua",
        access_log=f"{install_dir}/logs/access.log",
        access_log_buffered=True,
    ).encode("utf-8")
    files["lua/gwc/data/routes.json"] = _json_bytes(plan.route_data())
    files["lua/gwc/data/problems.json"] = _json_bytes(problems.catalogue())
    files["lua/gwc/data/access.json"] = _json_bytes(plan.access_data())
    if plan.validators_lua is not None:
        files["lua/gwc/data/validators.lua"] = plan.validators_lua.encode("utf-8")
    if plan.gateway.security.consumers is not None:
        # Outside lua/ and the manifest's hashes: operators edit this copy
        # (gwc keys new/revoke --file DIR/keys.json) and reload.
        files[KEYS_FILE] = _json_bytes(keys_data(plan.gateway.security.consumers))
    root = lua_dir()
    for path in sorted(root.rglob("*.lua")):
        files["lua/" + path.relative_to(root).as_posix()] = path.read_bytes()
    return files


def _secret_env(plan: Plan) -> List[str]:
    return sorted({s.jwt.secret_env for s in plan.gateway.security.schemes if s.jwt is not None and s.jwt.secret_env})


def _uses_tls_fetch(plan: Plan) -> bool:
    urls = [u for s in plan.gateway.security.schemes if s.jwt is not None for u in (s.jwt.jwks_uri, s.jwt.discovery) if u]
    urls += [op.access.authorizer.url for op in plan.gateway.operations if op.access.authorizer is not None]
    return any(u.startswith("https:") for u in urls)


def manifest(plan: Plan, options: RenderOptions, files: Dict[str, bytes]) -> bytes:
    return _json_bytes(
        {
            "gwc_version": __version__,
            "target": options.target,
            "inputs": dict(plan.gateway.input_hashes),
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items()) if name != KEYS_FILE},
        }
    )


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


def render(plan: Plan, options: RenderOptions) -> Tuple[Optional[Dict[str, bytes]], List[Diagnostic]]:
    try:
        files = render_files(plan, options)
    except UnsafeValue as exc:
        return None, [Diagnostic("GW038", str(exc))]
    files["manifest.json"] = manifest(plan, options, files)
    return files, []
