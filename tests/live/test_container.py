"""The same live cases against the official OpenResty image.

Runs wherever a Docker engine is reachable (docker SDK); elsewhere every case
is skipped with the reason, which `pytest -ra` prints. The output is built
with `--target openresty`, mounted at /gw, and served with host networking so
the gateway reaches the echo backends on 127.0.0.1 and the tests reach it.

Marked `container` only (not `live`): tests/conftest.py skips `live` tests
when no native nginx is installed, and this backend needs none.
"""
from __future__ import annotations

import pytest

import harness
from gwc import runtime
from support.processes import free_port, wait_for_port

pytestmark = pytest.mark.container

CASES = harness.load_cases()


class _ContainerRunner:
    """One OpenResty container serving a built output directory."""

    def __init__(self, client, out_dir, port: int):
        self.container = client.containers.run(
            runtime.OPENRESTY_IMAGE,
            ["openresty", "-p", "/gw/", "-c", "nginx.conf", "-e", "logs/error.log", "-g", "daemon off;"],
            volumes={str(out_dir.resolve()): {"bind": "/gw", "mode": "rw"}},
            network_mode="host",
            detach=True,
        )
        try:
            wait_for_port(port, deadline_s=30)
        except TimeoutError:
            logs = self.container.logs(tail=50).decode("utf-8", "replace")
            self.stop()
            raise RuntimeError(f"OpenResty container did not start listening on {port}:\n{logs}")

    def stop(self) -> None:
        try:
            self.container.stop(timeout=5)
        finally:
            self.container.remove(force=True)


@pytest.fixture(scope="module")
def container_gateways(backends, work_dir):
    ok, why = runtime.docker_available()
    if not ok:
        pytest.skip(f"OpenResty container backend: {why}")
    import docker  # type: ignore

    client = docker.from_env()
    try:
        client.images.get(runtime.OPENRESTY_IMAGE)
    except docker.errors.ImageNotFound:
        client.images.pull(runtime.OPENRESTY_IMAGE)
    pool = harness.GatewayPool(
        work_dir / "container",
        backends,
        free_port(),
        "openresty",
        lambda out_dir, port: _ContainerRunner(client, out_dir, port),
        free_port,
    )
    yield pool
    problems = pool.close()
    if problems:
        pytest.fail("unexpected lines in the OpenResty error logs:\n" + "\n".join(problems), pytrace=False)


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_case_in_container(case: harness.Case, container_gateways: harness.GatewayPool) -> None:
    gw = container_gateways.get(case.spec)
    result, expect = harness.run_case(case, gw)
    harness.check(case, result, expect)
