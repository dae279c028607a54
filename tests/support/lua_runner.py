"""Runs Lua chunks inside a real nginx worker (the LuaJIT the gateway ships on).

Module-level tests of the runtime Lua (crypto, JWT, schema validators) send a
chunk to one long-lived nginx and get its JSON-encoded return value back. The
chunk runs in a content handler, so cosockets, timers and shared dicts work.
"""
from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path
from typing import Any, List, Optional

import requests

from .processes import Nginx, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

_CONF = """
worker_processes 1;
error_log logs/error.log warn;
pid logs/nginx.pid;
{load_modules}
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    lua_package_path "{lua_path};;";
    lua_shared_dict gwc_test 1m;
    lua_socket_log_errors off;  # as in the generated http.conf
{shared_dicts}
{http_directives}
    client_max_body_size 64m;
    client_body_buffer_size 64m;
    resolver 127.0.0.1 ipv6=off;
    server {{
        listen 127.0.0.1:{port};
        location = /run {{
            content_by_lua_block {{
                local cjson = require "cjson.safe"
                ngx.req.read_body()
                local code = ngx.req.get_body_data()
                if not code then
                    local file = ngx.req.get_body_file()
                    local f = file and io.open(file, "rb")
                    code = f and f:read("*a")
                    if f then f:close() end
                end
                local fn, err = loadstring(code or "", "=test")
                if not fn then
                    ngx.status = 400
                    ngx.say(cjson.encode({{ error = "compile: " .. tostring(err) }}))
                    return
                end
                local ok, res = pcall(fn)
                if not ok then
                    ngx.status = 500
                    ngx.say(cjson.encode({{ error = tostring(res) }}))
                    return
                end
                local body, eerr = cjson.encode({{ result = res == nil and cjson.null or res }})
                if not body then
                    ngx.status = 500
                    ngx.say(cjson.encode({{ error = "encode: " .. tostring(eerr) }}))
                    return
                end
                ngx.say(body)
            }}
        }}
    }}
}}
"""


class LuaError(AssertionError):
    pass


class LuaRunner:
    """One nginx; `run(code)` executes a Lua chunk and returns what it returns."""

    def __init__(self, extra_lua_dirs: Optional[List[Path]] = None, shared_dicts: Optional[dict] = None,
                 http_directives: Optional[List[str]] = None):
        """http_directives: extra lines for the http block (e.g. lua_ssl_trusted_certificate for TLS clients)."""
        from gwc.render import NGINX_LUA_MODULES  # the same module list the gateway loads

        self.prefix = Path(tempfile.mkdtemp(prefix="gwc-lua-"))
        (self.prefix / "logs").mkdir()
        (self.prefix / "tmp").mkdir()
        self.port = free_port()
        dirs = [REPO_ROOT / "lua"] + list(extra_lua_dirs or [])
        lua_path = ";".join(f"{d}/?.lua" for d in dirs)
        modules = "\n".join(f"load_module {m};" for m in NGINX_LUA_MODULES if Path(m).exists())
        dicts = "\n".join(f"    lua_shared_dict {name} {size};" for name, size in (shared_dicts or {}).items())
        (self.prefix / "nginx.conf").write_text(
            _CONF.format(load_modules=modules, lua_path=lua_path, port=self.port, shared_dicts=dicts,
                         http_directives="\n".join(f"    {d}" for d in (http_directives or [])))
        )
        self.nginx = Nginx(self.prefix)
        self.session = requests.Session()

    def start(self) -> "LuaRunner":
        self.nginx.start([self.port])
        return self

    def stop(self) -> None:
        self.nginx.stop()
        self.session.close()

    def __enter__(self) -> "LuaRunner":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def run(self, code: str, timeout: float = 60.0) -> Any:
        resp = self.session.post(f"http://127.0.0.1:{self.port}/run", data=textwrap.dedent(code).encode(), timeout=timeout)
        payload = resp.json()
        if "error" in payload:
            raise LuaError(payload["error"])
        return payload["result"]

    def log_mark(self) -> int:
        """The current end of the error log, for `lua_errors(since=...)`."""
        return len(self.nginx.read_error_log())

    def lua_errors(self, since: int = 0) -> str:
        """Error-log lines at [error] or worse (after the `since` mark), for tests that assert a clean log."""
        lines = self.nginx.read_error_log()[since:].splitlines()
        return "\n".join(l for l in lines if "[error]" in l or "[crit]" in l or "[alert]" in l or "[emerg]" in l)
