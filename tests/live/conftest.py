"""Session fixtures for the live suite: echo backends and one real nginx per spec.

Each spec in specs/ is a template: the backend ports are filled in, it is
compiled with `gwc build` (the real command line), and served by nginx on a
free loopback port. After the session every error log must be free of
`[error]`-or-worse lines that no case declared, and of any Lua error.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import harness
from gwc import runtime
from support.processes import Nginx, closed_port, echo_backend, free_port


@pytest.fixture(scope="session")
def backends():
    with echo_backend("A") as port_a, echo_backend("B") as port_b:
        yield {"A": port_a, "B": port_b}


class _NativeRunner:
    def __init__(self, out_dir, port):
        self.nginx = Nginx(out_dir).start([port])

    def stop(self):
        self.nginx.stop()


@pytest.fixture(scope="session")
def work_dir():
    """A world-readable scratch directory.

    When the suite runs as root, nginx workers run as `nobody` and must read
    DIR/lua; pytest's tmp_path directories are 0700, so they cannot.
    """
    path = Path(tempfile.mkdtemp(prefix="gwc-live-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def gateways(backends, work_dir):
    rt, tried = runtime.detect(allow_docker=False)
    if rt is None:
        pytest.skip("no nginx with the Lua module: " + "; ".join(tried))
    pool = harness.GatewayPool(work_dir, backends, closed_port(), rt.target, _NativeRunner, free_port)
    yield pool
    problems = pool.close()
    if problems:
        pytest.fail("unexpected lines in the nginx error logs:\n" + "\n".join(problems), pytrace=False)
