"""The CLI commands a user runs: build, check, run (foreground, Ctrl-C), validate."""
import json
import signal
import subprocess
import sys
import time

import pytest

from support.processes import echo_backend, free_port, raw_request, wait_for_port

GWC = [sys.executable, "-m", "gwc.cli"]


def run(*args, cwd=None, env=None, timeout=120):
    return subprocess.run([*GWC, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_validate_ok(repo_root):
    proc = run("validate", str(repo_root / "examples/petstore/api.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "ok (8 operations, 6 paths)" in proc.stderr


def test_validate_json_ok_is_an_empty_list(repo_root):
    proc = run("validate", str(repo_root / "examples/petstore/api.yaml"), "--format", "json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == []


def test_build_writes_manifest(repo_root, tmp_path):
    proc = run("build", str(repo_root / "examples/petstore/api.yaml"), "-o", str(tmp_path / "out"), "--target", "openresty")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["target"] == "openresty"
    assert manifest["inputs"].keys() == {"api.yaml"}
    assert "nginx.conf" in manifest["files"] and "lua/gwc/router.lua" in manifest["files"]
    assert "load_module" not in (tmp_path / "out/nginx.conf").read_text(), "OpenResty has the Lua module built in"


def test_usage_error_exit_code(tmp_path):
    proc = run("build", "x.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "Missing option" in proc.stderr


@pytest.mark.live
def test_check_runs_nginx_t(repo_root, tmp_path):
    assert run("build", str(repo_root / "examples/petstore/api.yaml"), "-o", str(tmp_path / "out")).returncode == 0
    proc = run("check", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "configuration ok" in proc.stderr


@pytest.mark.live
def test_check_reports_a_broken_output(repo_root, tmp_path):
    assert run("build", str(repo_root / "examples/petstore/api.yaml"), "-o", str(tmp_path / "out")).returncode == 0
    routes = tmp_path / "out/lua/gwc/data/routes.json"
    routes.write_text("{not json")
    proc = run("check", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "GW060" in proc.stderr and "routes.json" in proc.stderr


def test_check_without_runtime_says_how_to_install(repo_root, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from gwc import cli, runtime

    assert run("build", str(repo_root / "examples/petstore/api.yaml"), "-o", str(tmp_path / "out")).returncode == 0
    monkeypatch.setattr(runtime, "detect", lambda allow_docker=True: (None, ["nginx: not found"]))
    result = CliRunner().invoke(cli.cli, ["check", str(tmp_path / "out")])
    assert result.exit_code == 3
    assert "scripts/install-runtime" in result.output and "tried: nginx: not found" in result.output


def test_runtime_detection_order(monkeypatch):
    from gwc import runtime

    seen = []

    def fake_native(binary):
        seen.append(binary)
        return runtime.Runtime("native", binary, "openresty", binary) if binary == "/opt/openresty" else None

    monkeypatch.setattr(runtime, "_native", fake_native)
    monkeypatch.setattr(runtime.shutil, "which", lambda name: f"/opt/{name}")
    monkeypatch.setenv("GWC_NGINX", "/custom/nginx")
    rt, tried = runtime.detect(allow_docker=False)
    assert seen == ["/custom/nginx", "/opt/openresty"]
    assert rt.binary == "/opt/openresty"
    assert tried[0].startswith("$GWC_NGINX=/custom/nginx")


@pytest.mark.live
def test_run_serves_in_foreground_and_stops_on_ctrl_c(tmp_path):
    with echo_backend() as backend:
        spec = tmp_path / "api.yaml"
        spec.write_text(
            "openapi: 3.0.3\ninfo: {title: t, version: '1'}\n"
            f"x-gateway:\n  upstreams: {{be: {{servers: ['http://127.0.0.1:{backend}']}}}}\n  upstream: be\n"
            "paths:\n  /hello:\n    get: {responses: {'200': {description: ok}}}\n"
        )
        port = free_port()
        proc = subprocess.Popen([*GWC, "run", str(spec), "--listen", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for_port(port, deadline_s=20)
            status, headers, body = raw_request(port, b"GET /hello?api_key=s3cret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status == 200
            assert json.loads(body)["path"] == "/hello?api_key=s3cret"
            time.sleep(0.3)  # let the access log line reach stdout
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        log = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert any(entry["path"] == "/hello" and entry["status"] == 200 and entry["request_id"] == headers["x-request-id"] for entry in log), out
        assert "s3cret" not in out, "query strings stay out of the access log"
        assert "Traceback" not in err


@pytest.mark.live
def test_build_check_keeps_the_old_output_when_nginx_rejects_the_new(repo_root, tmp_path):
    out = tmp_path / "out"
    assert run("build", str(repo_root / "examples/petstore/api.yaml"), "-o", str(out), "--check").returncode == 0
    before = (out / "nginx.conf").read_bytes()
    # An upstream host that does not resolve passes gwc's checks but fails nginx -t.
    spec = (repo_root / "examples/petstore/api.yaml").read_text().replace("http://127.0.0.1:8081", "http://no-such-host.invalid:8081")
    (tmp_path / "api.yaml").write_text(spec)
    proc = run("build", str(tmp_path / "api.yaml"), "-o", str(out), "--check")
    assert proc.returncode == 1
    assert "GW060" in proc.stderr and "no-such-host.invalid" in proc.stderr
    assert (out / "nginx.conf").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
