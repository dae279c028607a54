"""Find an NGINX runtime with the Lua module: native binary or container.

Order: $GWC_NGINX, `openresty`, `nginx` with the Lua module, then the
official OpenResty image through the docker SDK when an engine is reachable.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

OPENRESTY_IMAGE = "openresty/openresty:1.27.1.2-0-bookworm-fat"
DEBIAN_LUA_MODULE = Path("/usr/lib/nginx/modules/ngx_http_lua_module.so")

INSTALL_HINT = (
    "no NGINX runtime with the Lua module was found. Install one of:\n"
    "  - Debian/Ubuntu: sudo scripts/install-runtime  (nginx, libnginx-mod-http-lua, lua-resty-core, lua-resty-lrucache, lua-cjson)\n"
    "  - OpenResty: https://openresty.org/en/installation.html\n"
    "  - or set GWC_NGINX to the path of an nginx/openresty binary, or start a Docker engine to use "
    + OPENRESTY_IMAGE
)


@dataclass(frozen=True)
class Runtime:
    kind: str  # "native" or "docker"
    binary: Optional[str]
    target: str  # "openresty" or "nginx-lua"
    description: str


def _version_text(binary: str) -> str:
    try:
        proc = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stderr + proc.stdout


def _native(binary: str) -> Optional[Runtime]:
    text = _version_text(binary)
    if not text:
        return None
    if "openresty" in text.lower():
        return Runtime("native", binary, "openresty", f"{binary} (OpenResty)")
    if "lua-nginx-module" in text or "ngx_lua" in text:
        return Runtime("native", binary, "openresty", f"{binary} (nginx with built-in Lua)")
    if DEBIAN_LUA_MODULE.is_file():
        return Runtime("native", binary, "nginx-lua", f"{binary} (nginx with the dynamic Lua module)")
    return None


def docker_available() -> Tuple[bool, str]:
    try:
        import docker  # type: ignore

        client = docker.from_env(timeout=5)
        client.ping()
        return True, "docker engine reachable"
    except Exception as exc:  # the SDK raises many types when no engine runs
        return False, f"no Docker engine reachable ({type(exc).__name__}: {str(exc)[:120]})"


def detect(allow_docker: bool = True) -> Tuple[Optional[Runtime], List[str]]:
    tried = []
    env = os.environ.get("GWC_NGINX")
    if env:
        rt = _native(env)
        if rt:
            return rt, tried
        tried.append(f"$GWC_NGINX={env} is not an nginx with the Lua module")
    for name in ("openresty", "nginx"):
        path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
        if path:
            rt = _native(path)
            if rt:
                return rt, tried
            tried.append(f"{path} has no Lua module")
        else:
            tried.append(f"{name}: not found")
    if allow_docker:
        ok, why = docker_available()
        if ok:
            return Runtime("docker", None, "openresty", f"docker image {OPENRESTY_IMAGE}"), tried
        tried.append(why)
    return None, tried


def nginx_test(runtime: Runtime, out_dir: Path) -> Tuple[bool, str]:
    """Run `nginx -t` on a built output directory."""
    out_dir = Path(out_dir).resolve()
    if runtime.kind == "native":
        cmd = [runtime.binary, "-t", "-q", "-p", str(out_dir) + "/", "-c", "nginx.conf", "-e", "/dev/stderr"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            return False, str(exc)
        return proc.returncode == 0, (proc.stderr + proc.stdout).strip()
    import docker  # type: ignore

    client = docker.from_env()
    try:
        output = client.containers.run(
            OPENRESTY_IMAGE,
            ["openresty", "-t", "-q", "-p", "/gw/", "-c", "nginx.conf", "-e", "/dev/stderr"],
            volumes={str(out_dir): {"bind": "/gw", "mode": "rw"}},
            remove=True,
            stderr=True,
        )
        return True, output.decode("utf-8", "replace").strip()
    except Exception as exc:
        return False, str(exc)
