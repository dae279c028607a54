"""Loopback page servers for the real-browser suite."""
from __future__ import annotations

import contextlib
import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

PAGES_DIR = Path(__file__).resolve().parent / "pages"


class _QuietPages(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


@contextlib.contextmanager
def page_server(directory: Path = PAGES_DIR, host: str = "127.0.0.1") -> Iterator[int]:
    """A threaded static server for the test pages on a free loopback port. Yields the port."""
    server = ThreadingHTTPServer((host, 0), functools.partial(_QuietPages, directory=str(directory)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
