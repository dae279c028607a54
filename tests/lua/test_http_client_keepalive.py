"""gwc.http_client connection reuse (used by the external authorizer on the request path).

A raw HTTP/1.1 server counts the TCP connections it accepts. In `stale`
mode it answers with keep-alive semantics but closes the connection right
after each response, like a server whose idle timeout has passed: the client
must then retry once on a new connection instead of failing the request.
"""
import socket
import threading

import pytest


class CountingServer:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests = 0
        self.stale = False
        self.http10 = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(5)
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buf += chunk
                _, _, buf = buf.partition(b"\r\n\r\n")
                with self.lock:
                    self.requests += 1
                version = b"HTTP/1.0" if self.http10 else b"HTTP/1.1"
                conn.sendall(version + b" 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
                if self.stale or self.http10:
                    return

    def close(self):
        # close() alone does not wake a thread blocked in accept() on Linux,
        # which would keep the port listening after the test.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def counting():
    s = CountingServer()
    yield s
    s.close()


def _five_requests(lua, port, keepalive=True):
    option = "keepalive = { timeout = 10000, size = 8 }," if keepalive else ""
    return lua.run(f"""
        local hc = require "gwc.http_client"
        local out = {{}}
        for i = 1, 5 do
            local res, err = hc.request{{ url = "http://127.0.0.1:{port}/check", timeout = 2000, {option} }}
            out[i] = res and res.status or err
        end
        return out
    """)


def test_keepalive_reuses_one_connection(lua, counting):
    assert _five_requests(lua, counting.port) == [200] * 5
    assert counting.requests == 5 and counting.connections == 1


def test_without_keepalive_each_request_connects(lua, counting):
    assert _five_requests(lua, counting.port, keepalive=False) == [200] * 5
    assert counting.connections == 5


def test_a_connection_the_server_closed_is_retried_once_not_failed(lua, counting):
    counting.stale = True
    mark = lua.log_mark()
    assert _five_requests(lua, counting.port) == [200] * 5
    assert counting.requests == 5
    # nginx itself may log the reset of the stale connection (recv() failed,
    # 104) when the retry races the server's close; nothing else may appear.
    errors = [line for line in lua.lua_errors(since=mark).splitlines() if "Connection reset by peer" not in line]
    assert errors == []


def test_http10_responses_are_not_pooled(lua, counting):
    counting.http10 = True
    assert _five_requests(lua, counting.port) == [200] * 5
    assert counting.connections == 5
