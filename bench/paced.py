"""A paced HTTP/1.1 client: one keep-alive connection, one request per interval
on a fixed schedule, each response timed with perf_counter_ns.

wrk has no fixed-rate mode, and a closed loop at full speed measures
throughput, not the latency a request sees on a lightly loaded gateway.
If a response arrives after the next request was due, that request is sent
at once (it is counted as late); latency is measured from the actual send,
and separately from the scheduled send time (which includes the lateness).
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple


class PacedError(RuntimeError):
    pass


@dataclass
class PacedResult:
    latencies_ns: List[int] = field(default_factory=list)  # from the actual send
    from_schedule_ns: List[int] = field(default_factory=list)  # from the scheduled send
    statuses: dict = field(default_factory=dict)
    late: int = 0
    reconnects: int = 0
    duration_s: float = 0.0


def percentile(sorted_values: List[int], p: float) -> Optional[int]:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-p * len(sorted_values) // 100)))  # ceil(p/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


class _Conn:
    def __init__(self, host: str, port: int, timeout_s: float):
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.sock: Optional[socket.socket] = None
        self.buf = b""

    def open(self) -> None:
        self.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def _fill(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise PacedError("response deadline exceeded")
        chunk = self.sock.recv(65536)  # type: ignore[union-attr]
        if not chunk:
            raise PacedError("connection closed by the server mid-response")
        self.buf += chunk

    def read_response(self, deadline: float) -> Tuple[int, bool]:
        """Read one response; return (status, server_closes)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip().lower()
        self.buf = rest
        if "content-length" in headers:
            length = int(headers["content-length"])
            while len(self.buf) < length:
                self._fill(deadline)
            self.buf = self.buf[length:]
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                while b"\r\n" not in self.buf:
                    self._fill(deadline)
                size_line, _, self.buf = self.buf.partition(b"\r\n")
                size = int(size_line.split(b";")[0] or b"0", 16)
                while len(self.buf) < size + 2:
                    self._fill(deadline)
                self.buf = self.buf[size + 2 :]
                if size == 0:
                    break
        else:
            raise PacedError("response without Content-Length or chunked encoding")
        return status, headers.get("connection") == "close"


def run(host: str, port: int, path: str, rate: float, duration_s: float, warmup: int = 200, timeout_s: float = 5.0) -> PacedResult:
    """Send `rate` requests per second for `duration_s` seconds after `warmup`
    unrecorded requests. Every wait has a deadline."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: gwc-bench-paced\r\n\r\n".encode()
    interval_ns = int(1e9 / rate)
    total = warmup + int(rate * duration_s)
    out = PacedResult()
    conn = _Conn(host, port, timeout_s)
    hard_deadline = time.monotonic() + duration_s + warmup / rate + 30 + timeout_s
    try:
        conn.open()
        start = time.perf_counter_ns()
        for i in range(total):
            if time.monotonic() > hard_deadline:
                raise PacedError("paced run exceeded its deadline")
            scheduled = start + i * interval_ns
            now = time.perf_counter_ns()
            if now < scheduled:
                time.sleep((scheduled - now) / 1e9)
            sent = time.perf_counter_ns()
            conn.sock.sendall(request)  # type: ignore[union-attr]
            status, closes = conn.read_response(time.monotonic() + timeout_s)
            done = time.perf_counter_ns()
            if i >= warmup:
                out.latencies_ns.append(done - sent)
                out.from_schedule_ns.append(done - scheduled)
                out.statuses[status] = out.statuses.get(status, 0) + 1
                if sent - scheduled > 200_000:
                    out.late += 1
            if closes:  # keepalive_requests reached: reconnect outside the timed window
                conn.open()
                out.reconnects += 1
        out.duration_s = (time.perf_counter_ns() - start) / 1e9
    finally:
        conn.close()
    return out


def summary(result: PacedResult) -> dict:
    lat = sorted(result.latencies_ns)
    sched = sorted(result.from_schedule_ns)

    def us(v: Optional[int]) -> Optional[float]:
        return None if v is None else round(v / 1000, 1)

    return {
        "samples": len(lat),
        "p50_us": us(percentile(lat, 50)),
        "p90_us": us(percentile(lat, 90)),
        "p99_us": us(percentile(lat, 99)),
        "max_us": us(lat[-1] if lat else None),
        "p99_from_schedule_us": us(percentile(sched, 99)),
        "late_sends": result.late,
        "reconnects": result.reconnects,
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
    }
