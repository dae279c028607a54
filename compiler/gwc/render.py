"""Stage 5: render templates, copy the runtime Lua, write generated data.

Everything is produced in memory, as relative path -> bytes; output.py puts
it on disk.
"""
from __future__ import annotations

import hashlib
import json
from json.encoder import encode_basestring as _encode_str  # the C function when available
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import jinja2

from . import __version__, problems, waf as waf_rules
from .compression import BROTLI_MODULE
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


_SAFE_REGEX = re.compile(r"^[A-Za-z0-9^$|()?:+*.\[\]\\/-]+$")


def ngx_regex(value) -> str:
    """A case-insensitive map regex (`~*`) as a double-quoted token: only regex syntax, letters and
    digits; no quote, space, `;`, `{` or `\\\\` (nginx keeps other backslash pairs as written)."""
    text = str(value)
    if not _SAFE_REGEX.match(text) or "\\\\" in text or text.endswith("\\"):
        raise UnsafeValue(f"unsafe regular expression for the configuration: {text!r}")
    return f'"~*{text}"'


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
    env.filters.update(ngx_str=ngx_str, ngx_word=ngx_word, ngx_variable=ngx_variable, ngx_time=ngx_time, ngx_regex=ngx_regex,
                       waf_rules=_waf_rules)
    return env


@jinja2.pass_environment
def _waf_rules(env: jinja2.Environment, waf) -> Tuple[str, ...]:
    """A location's WAF rules as quoted modsecurity_rules arguments; rendered once per distinct WAF and output form."""
    key = (waf, env.globals["waf_audit_log"])
    cache = env.globals.setdefault("waf_rules_cache", {})
    if key not in cache:
        try:
            cache[key] = waf_rules.rules_chunks(env.get_template("waf.conf.j2"), waf, key[1])
        except waf_rules.RulesTooLong as exc:
            raise UnsafeValue(str(exc))
    return cache[key]


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
    uses_waf = any(loc.waf is not None for loc in plan.locations)
    modules = NGINX_LUA_MODULES + ((waf_rules.MODSECURITY_MODULE,) if uses_waf else ())
    # brotli only where a location compresses with it (compression.py decides per target).
    uses_brotli = any(loc.compression is not None and loc.compression.uses_brotli(options.target) for loc in plan.locations)
    if uses_brotli:
        modules += (BROTLI_MODULE,)
    env.globals.update(compression_target=options.target, compression_brotli=uses_brotli)
    # ModSecurity resolves its paths against nginx's working directory, not its prefix.
    env.globals.update(
        waf_error_pages=[status for status in problems.ERROR_PAGE_STATUSES if status != 403],
        waf_error_uri=ERROR_URI,
        waf_audit_log="/dev/stderr" if options.foreground else f"{install_dir}/logs/waf.log",
        waf_error_log="/dev/stderr" if options.foreground else "logs/error.log",
    )
    files["nginx.conf"] = env.get_template("nginx.conf.j2").render(
        **common,
        modules=modules if options.target == "nginx-lua" else (),
        lua_root="$prefix/lua",
        error_log="/dev/stderr" if options.foreground else "logs/error.log",
        access_log="/dev/stdout" if options.foreground else "logs/access.log",
        access_log_buffered=not options.foreground,
    ).encode("utf-8")
    env.globals.update(waf_audit_log=f"{install_dir}/logs/waf.log", waf_error_log=f"{install_dir}/logs/error.log")
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
    names = {s.jwt.secret_env for s in plan.gateway.security.schemes if s.jwt is not None and s.jwt.secret_env}
    redis = plan.gateway.traffic.redis
    if redis is not None and redis.password_env and plan.uses_lua_limits:
        names.add(redis.password_env)
    return sorted(names)


def _uses_tls_fetch(plan: Plan) -> bool:
    urls = [u for s in plan.gateway.security.schemes if s.jwt is not None for u in (s.jwt.jwks_uri, s.jwt.discovery) if u]
    urls += [op.access.authorizer.url for op in plan.gateway.operations if op.access.authorizer is not None]
    redis = plan.gateway.traffic.redis
    return any(u.startswith("https:") for u in urls) or bool(redis and redis.tls and plan.uses_lua_limits)


def manifest(plan: Plan, options: RenderOptions, files: Dict[str, bytes]) -> bytes:
    return _json_bytes(
        {
            "gwc_version": __version__,
            "target": options.target,
            "inputs": dict(plan.gateway.input_hashes),
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items()) if name != KEYS_FILE},
        }
    )


def render(plan: Plan, options: RenderOptions) -> Tuple[Optional[Dict[str, bytes]], List[Diagnostic]]:
    try:
        files = render_files(plan, options)
    except UnsafeValue as exc:
        return None, [Diagnostic("GW038", str(exc))]
    files["manifest.json"] = manifest(plan, options, files)
    return files, []
