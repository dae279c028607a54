"""Real redis-server processes for tests: standalone (optionally password and TLS) and a three-master Cluster.

Every wait has a deadline and says what it waited for; every process is killed by stop() / the context manager.
Commands go over a tiny RESP client on plain sockets, so the tests need no Redis package.
"""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .certs import make_ca, make_server_cert
from .processes import free_port


class RedisReplyError(Exception):
    """An error reply (-ERR ..., -MOVED ..., -ASK ...) from the server."""


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the Cluster key hash."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def key_slot(key: str | bytes) -> int:
    """The Cluster slot of a key, honouring the first non-empty {hash tag}."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return crc16(raw) % 16384


def _encode(args: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisReplyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ConnectionError(f"unexpected RESP line {line!r}")


class Connection:
    """One blocking RESP connection (AUTH once when a password is given)."""

    def __init__(self, port: int, host: str = "127.0.0.1", password: Optional[str] = None,
                 tls: Optional[ssl.SSLContext] = None, timeout: float = 5.0):
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.reader = _Reader(sock)
        if password:
            self.call("AUTH", password)

    def call(self, *args: Any) -> Any:
        self.sock.sendall(_encode(args))
        reply = self.reader.reply()
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _kill(proc: Optional[subprocess.Popen], deadline_s: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=deadline_s)


class RedisServer:
    """One redis-server on a free loopback port in its own temp dir.

    tls=True makes a throwaway CA and a server certificate for 127.0.0.1/localhost; `.ca_path` is the CA to trust.
    `stop()` then `start()` reuses the same port, for outage and recovery tests."""

    def __init__(self, password: Optional[str] = None, tls: Optional[bool] = None, port: Optional[int] = None,
                 extra_args: Optional[List[str]] = None, directory: Optional[Path] = None):
        self.password = password
        self.tls = bool(tls)
        self.port = port or free_port()
        self.extra_args = list(extra_args or [])
        self._own_dir = directory is None
        self.dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="gwc-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: Optional[subprocess.Popen] = None
        self.ca_path: Optional[Path] = None
        self._client_tls: Optional[ssl.SSLContext] = None
        if self.tls:
            self.ca_path, ca_key, ca_cert = make_ca(self.dir)
            self.cert_path, self.key_path = make_server_cert(self.dir, ca_key, ca_cert, ["localhost", "127.0.0.1"])
            ctx = ssl.create_default_context(cafile=str(self.ca_path))
            self._client_tls = ctx

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command_line(self) -> List[str]:
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        cmd = [binary, "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "", "--appendonly", "no",
               "--logfile", str(self.dir / "redis.log"), "--daemonize", "no", "--protected-mode", "no"]
        if self.tls:
            cmd += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.cert_path),
                    "--tls-key-file", str(self.key_path), "--tls-ca-cert-file", str(self.ca_path),
                    "--tls-auth-clients", "no"]
        else:
            cmd += ["--port", str(self.port)]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd + self.extra_args

    def start(self, deadline_s: float = 10.0) -> "RedisServer":
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(self.command_line(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        end = time.monotonic() + deadline_s
        last = "no attempt"
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if self.call("PING") == "PONG":
                    return self
            except (OSError, ConnectionError, RedisReplyError) as e:
                last = str(e)
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"redis-server on {self.address} did not answer PING within {deadline_s}s ({last}); "
                           f"log: {self.log_tail()}")

    def connect(self, timeout: float = 5.0) -> Connection:
        return Connection(self.port, password=self.password, tls=self._client_tls, timeout=timeout)

    def call(self, *args: Any) -> Any:
        """One command on a fresh connection (raises RedisReplyError on an error reply)."""
        with self.connect() as conn:
            return conn.call(*args)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        _kill(self.proc)

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


class ClusterNode(RedisServer):
    """A `--cluster-enabled yes` server with its bus on a second free port."""

    def __init__(self, directory: Path):
        self.bus_port = free_port()
        super().__init__(directory=directory)
        self.node_id = ""
        self.extra_args = ["--cluster-enabled", "yes", "--cluster-port", str(self.bus_port),
                           "--cluster-config-file", str(directory / "nodes.conf"),
                           "--cluster-node-timeout", "2000",
                           # Slots of a stopped master fail alone; the rest of the cluster keeps serving.
                           "--cluster-require-full-coverage", "no"]

    def role(self) -> str:
        return self.call("ROLE")[0]

    def cluster_info(self) -> Dict[str, str]:
        text = self.call("CLUSTER", "INFO")
        return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)


class RedisCluster:
    """Three (or `masters`) Cluster masters with no replicas, the 16384 slots split by redis-cli --cluster create."""

    def __init__(self, masters: int = 3):
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.dir = Path(tempfile.mkdtemp(prefix="gwc-redis-cluster-"))
        self.nodes: List[ClusterNode] = []
        self.replicas: List[ClusterNode] = []
        for i in range(masters):
            d = self.dir / f"node{i}"
            d.mkdir()
            self.nodes.append(ClusterNode(d))

    @property
    def seeds(self) -> List[str]:
        return [n.url for n in self.nodes]

    def start(self, deadline_s: float = 30.0) -> "RedisCluster":
        try:
            for n in self.nodes:
                n.start()
                n.node_id = n.call("CLUSTER", "MYID")
            cli = shutil.which("redis-cli")
            if not cli:
                raise RuntimeError("redis-cli is not installed")
            created = subprocess.run([cli, "--cluster", "create", *[n.address for n in self.nodes],
                                      "--cluster-replicas", "0", "--cluster-yes"],
                                     capture_output=True, text=True, timeout=deadline_s)
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]} {created.stderr[-2000:]}")
            self.wait_ok(deadline_s)
        except BaseException:
            self.stop()
            raise
        return self

    def live_nodes(self) -> List[ClusterNode]:
        return [n for n in self.nodes + self.replicas if n.running()]

    def add_replica(self, master: ClusterNode, deadline_s: float = 30.0) -> ClusterNode:
        """A new node replicating `master`, joined and in sync; `failover(replica)` promotes it."""
        d = self.dir / f"node{len(self.nodes) + len(self.replicas)}"
        d.mkdir()
        replica = ClusterNode(d)
        self.replicas.append(replica)
        replica.start()
        replica.node_id = replica.call("CLUSTER", "MYID")
        replica.call("CLUSTER", "MEET", "127.0.0.1", master.port, master.bus_port)
        end = time.monotonic() + deadline_s
        while master.node_id not in replica.call("CLUSTER", "NODES"):
            if time.monotonic() > end:
                raise TimeoutError(f"{replica.address} did not learn {master.address} within {deadline_s}s")
            time.sleep(0.05)
        while True:
            try:
                replica.call("CLUSTER", "REPLICATE", master.node_id)
                break
            except RedisReplyError as e:  # the master's role may not have reached it yet
                if time.monotonic() > end:
                    raise TimeoutError(f"CLUSTER REPLICATE on {replica.address}: {e}")
                time.sleep(0.05)
        while "master_link_status:up" not in replica.call("INFO", "replication"):
            if time.monotonic() > end:
                raise TimeoutError(f"{replica.address} not in sync with {master.address} within {deadline_s}s")
            time.sleep(0.05)
        self.wait_ok(deadline_s)
        return replica

    def failover(self, replica: ClusterNode, deadline_s: float = 30.0) -> None:
        """Promotes `replica` without its master's agreement (the master may be stopped), until every live node
        routes the master's slots to it."""
        replica.call("CLUSTER", "FAILOVER", "TAKEOVER")
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                if replica.role() == "master" and all(
                        any(port == replica.port for _, _, port in self._slot_owners(n)) for n in self.live_nodes()):
                    return
            except (OSError, ConnectionError, RedisReplyError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{replica.address} was not promoted on every node within {deadline_s}s")

    def wait_ok(self, deadline_s: float = 30.0) -> None:
        """Until every node says cluster_state:ok and agrees on who serves every slot."""
        end = time.monotonic() + deadline_s
        states: Dict[str, str] = {}
        while time.monotonic() < end:
            try:
                states = {n.address: n.cluster_info().get("cluster_state", "?") for n in self.live_nodes()}
                if all(s == "ok" for s in states.values()) and self._views_agree():
                    return
            except (OSError, ConnectionError, RedisReplyError) as e:
                states = {"error": str(e)}
            time.sleep(0.05)
        raise TimeoutError(f"cluster not ok on every node within {deadline_s}s: {states}")

    def _views_agree(self) -> bool:
        views = [self._slot_owners(n) for n in self.live_nodes()]
        return all(v == views[0] for v in views)

    @staticmethod
    def _slot_owners(node: ClusterNode) -> List[tuple]:
        return sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in node.call("CLUSTER", "SLOTS"))

    @classmethod
    def _slot_owner_port(cls, node: ClusterNode, slot: int) -> Optional[int]:
        for start, end, port in cls._slot_owners(node):
            if start <= slot <= end:
                return port
        return None

    def node_for_port(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes + self.replicas if n.port == port)

    def owner(self, slot: int) -> ClusterNode:
        """The master serving `slot`, as the first live node sees it."""
        port = self._slot_owner_port(self.live_nodes()[0], slot)
        if port is None:
            raise LookupError(f"slot {slot} is not served")
        return self.node_for_port(port)

    def key_owner(self, key: str) -> ClusterNode:
        return self.owner(key_slot(key))

    def other_master(self, slot: int) -> ClusterNode:
        current = self.owner(slot)
        return next(n for n in self.live_nodes() if n is not current and n.role() == "master")

    def begin_migration(self, slot: int, target: ClusterNode) -> "SlotMigration":
        return SlotMigration(self, slot, self.owner(slot), target).begin()

    def move_slot(self, slot: int, target: Optional[ClusterNode] = None) -> ClusterNode:
        """Moves one slot with its keys to `target` (default: another master); returns the target."""
        target = target or self.other_master(slot)
        self.begin_migration(slot, target).migrate_keys().finish()
        return target

    def move_slots(self, first: int, last: int, target: ClusterNode) -> None:
        for slot in range(first, last + 1):
            if self.owner(slot) is not target:
                self.move_slot(slot, target)

    def call_for_key(self, key: str, *args: Any) -> Any:
        return self.key_owner(key).call(*args)

    def stop(self) -> None:
        for n in self.nodes + self.replicas:
            n.stop()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


class SlotMigration:
    """The steps of moving one slot, separable so tests can call in between:

    begin() -> the source answers ASK for keys it no longer holds; migrate_keys() -> every key is on the target
    (the source answers ASK for all of them); finish() -> every master says the target owns it (MOVED)."""

    def __init__(self, cluster: RedisCluster, slot: int, source: ClusterNode, target: ClusterNode):
        if source is target:
            raise ValueError(f"slot {slot} is already on {target.address}")
        self.cluster, self.slot, self.source, self.target = cluster, slot, source, target

    def begin(self) -> "SlotMigration":
        self.target.call("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.source.node_id)
        self.source.call("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.target.node_id)
        return self

    def migrate_keys(self, deadline_s: float = 30.0) -> "SlotMigration":
        end = time.monotonic() + deadline_s
        while True:
            keys = self.source.call("CLUSTER", "GETKEYSINSLOT", self.slot, 100)
            if not keys:
                return self
            if time.monotonic() > end:
                raise TimeoutError(f"slot {self.slot} still has keys on {self.source.address} after {deadline_s}s")
            self.source.call("MIGRATE", "127.0.0.1", self.target.port, "", 0, 5000, "REPLACE", "KEYS", *keys)

    def finish(self, deadline_s: float = 30.0) -> None:
        # The target first, so it serves the slot before the source starts sending MOVED there.
        for node in [self.target, self.source] + [n for n in self.cluster.live_nodes() if n not in (self.source, self.target)]:
            node.call("CLUSTER", "SETSLOT", self.slot, "NODE", self.target.node_id)
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if all(self.cluster._slot_owner_port(n, self.slot) == self.target.port for n in self.cluster.live_nodes()):
                return
            time.sleep(0.05)
        raise TimeoutError(f"not every node sees slot {self.slot} on {self.target.address} after {deadline_s}s")

