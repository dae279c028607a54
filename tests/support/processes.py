"""Real processes for tests and benchmarks: nginx, an echo backend, free ports.

Every wait has a deadline; every process is stopped by its context manager.
"""
from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from gwc import runtime


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# Sockets that keep closed_port()'s ports taken until the test process exits.
_HELD_CLOSED: List[socket.socket] = []


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for as long as the test process lives.

    A port from free_port() is free again at once: a later test's server may
    bind it, and a gateway whose timer keeps dialling its "dead" upstream then
    reaches that server (and logs its reset). A bound, never-listening socket
    (without SO_REUSEADDR) refuses every connect and keeps the port from
    being handed out again."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((host, 0))
    _HELD_CLOSED.append(s)
    return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", deadline_s: float = 10.0, alive=None) -> None:
    """Waits for a listener; `alive` (a callable) ends the wait early once the server process has died."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if alive is not None and not alive():
            raise TimeoutError(f"the server process exited before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {deadline_s}s")


def nginx_binary() -> Optional[str]:
    rt, _ = runtime.detect(allow_docker=False)
    return rt.binary if rt else None


class Nginx:
    """nginx -p DIR -c nginx.conf in the foreground of a child process."""

    def __init__(self, prefix: Path, binary: Optional[str] = None, conf: str = "nginx.conf"):
        self.prefix = Path(prefix).resolve()
        self.binary = binary or nginx_binary()
        self.conf = conf
        self.proc: Optional[subprocess.Popen] = None

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    def start(self, ports: List[int], deadline_s: float = 15.0) -> "Nginx":
        if not self.binary:
            raise RuntimeError(runtime.INSTALL_HINT)
        (self.prefix / "logs").mkdir(exist_ok=True)
        cmd = [self.binary, "-p", str(self.prefix) + "/", "-c", self.conf, "-e", "logs/error.log", "-g", "daemon off;"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for port in ports:
                wait_for_port(port, deadline_s=deadline_s, alive=lambda: self.proc.poll() is None)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"nginx did not start: {self.read_error_log()[-2000:]}")
        return self

    def worker_pids(self) -> List[int]:
        if self.proc is None:
            return []
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid:
                out.append(int(entry.name))
        return sorted(out)

    def read_error_log(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, deadline_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=deadline_s)

    def __enter__(self) -> "Nginx":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers every request with JSON describing exactly what arrived."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, the second waits
    # for the gateway's delayed ACK on its keep-alive connection (~40 ms).
    disable_nagle_algorithm = True

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        control = self.headers.get("X-Echo-Status")
        delay = float(self.headers.get("X-Echo-Delay") or 0)
        if delay:
            time.sleep(min(delay, 10))
        payload = json.dumps(
            {
                "backend": self.server.name,  # type: ignore[attr-defined]
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
            }
        ).encode()
        self.send_response(int(control) if control else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Backend", self.server.name)  # type: ignore[attr-defined]
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_TRACE = _handle

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def echo_backend(name: str = "echo", port: Optional[int] = None, tls: Optional[Tuple[str, str]] = None) -> Iterator[int]:
    """A threaded HTTP(S) server on loopback that echoes requests as JSON. Yields its port.

    tls: (certificate chain PEM path, private key PEM path) to serve HTTPS."""
    server = ThreadingHTTPServer(("127.0.0.1", port or 0), _EchoHandler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    server.name = name  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def dropping_backend() -> Iterator[int]:
    """Accepts a connection, reads the request, then closes without answering:
    the request has reached the server, so retrying it could repeat its effect."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    stop = threading.Event()
    received = []

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    received.append(conn.recv(65536))
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def raw_request(port: int, request: bytes, host: str = "127.0.0.1", deadline_s: float = 10.0,
                tls: Optional[ssl.SSLContext] = None) -> Tuple[int, dict, bytes]:
    """Send bytes exactly as given (no client-side path normalisation); parse one response.
    With `tls`, over TLS with that client context (SNI localhost)."""
    with socket.create_connection((host, port), timeout=deadline_s) as plain:
        s = tls.wrap_socket(plain, server_hostname="localhost") if tls is not None else plain
        try:
            s.sendall(request)
            data = b""
            end = time.monotonic() + deadline_s
            while time.monotonic() < end:
                try:
                    chunk = s.recv(65536)
                except ssl.SSLError:  # a TLS peer closing without close_notify
                    break
                if not chunk:
                    break
                data += chunk
        finally:
            if s is not plain:
                s.close()
    return parse_response(data)


def parse_response(data: bytes) -> Tuple[int, dict, bytes]:
    """Status, lower-cased headers (first value wins) and de-chunked body of one response."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), v.strip())
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return status, headers, body


def log_size(path: Path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def log_since(path: Path, offset: int) -> str:
    """What a log file gained after `offset` bytes (for per-request error-log checks)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


def have_nginx() -> bool:
    return nginx_binary() is not None
