"""conf.d/ is the same gateway as an http-level include in a fleet's own nginx.conf."""
import json
import subprocess
import sys

import pytest

from support.processes import Nginx, echo_backend, free_port, raw_request


@pytest.mark.live
def test_conf_d_in_an_existing_nginx_conf(tmp_path, repo_root):
    install_dir = tmp_path / "gw"
    port = free_port()
    with echo_backend() as backend:
        spec = (repo_root / "examples/petstore/api.yaml").read_text().replace("http://127.0.0.1:8081", f"http://127.0.0.1:{backend}")
        (tmp_path / "api.yaml").write_text(spec)
        proc = subprocess.run([sys.executable, "-m", "gwc.cli", "build", "api.yaml", "-o", str(install_dir), "--target", "nginx-lua",
                               "--install-dir", str(install_dir), "--listen", f"127.0.0.1:{port}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        fleet = tmp_path / "fleet"
        (fleet / "logs").mkdir(parents=True)
        (fleet / "nginx.conf").write_text(
            "load_module /usr/lib/nginx/modules/ndk_http_module.so;\n"
            "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;\n"
            "pid logs/nginx.pid;\nevents {}\n"
            f"http {{\n  client_body_temp_path {fleet}/tmp_body;\n  proxy_temp_path {fleet}/tmp_proxy;\n"
            f"  include {install_dir}/conf.d/*.conf;\n}}\n"
        )
        with Nginx(fleet).start([port]) as nginx:
            status, headers, body = raw_request(port, b"GET /v1/pets/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status == 200 and json.loads(body)["path"] == "/pets/2"
            status, headers, body = raw_request(port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status == 200 and json.loads(body) == {"status": "ok"}
            status, headers, body = raw_request(port, b"GET /v1/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status == 404 and headers["content-type"] == "application/problem+json"
            nginx.stop()
            log = (install_dir / "logs/access.log").read_text().splitlines()
            assert [json.loads(l)["status"] for l in log] == [200, 200, 404]
