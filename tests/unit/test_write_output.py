"""write_output: a new generation goes live in one step, and a failed one changes nothing."""
import errno
import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from gwc import output
from gwc.diagnostics import Diagnostic
from gwc.keys import add_consumer


def files(version, keys=True):
    out = {
        "nginx.conf": f"# nginx.conf {version}\n".encode(),
        "conf.d/gateway.conf": f"# conf.d {version}\n".encode(),
        "lua/gwc/init.lua": b"-- runtime\n",
        "lua/gwc/data/routes.json": json.dumps({"version": version}).encode(),
        "manifest.json": json.dumps({"version": version}).encode(),
    }
    if keys:
        out["keys.json"] = json.dumps({"consumers": {}, "version": version}).encode()
    return out


def snapshot(root):
    """Every entry under root: a link's target, a file's sha256, or a directory."""
    out = {}
    for base, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(base) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def running_master_state(out):
    """What a running nginx leaves in DIR: its pid file, logs, a client body being buffered."""
    (out / "logs/nginx.pid").write_text("4242\n")
    (out / "logs/error.log").write_text("old error log\n")
    (out / "tmp/client_body").mkdir()
    (out / "tmp/client_body/0000000001").write_bytes(b"body in flight")


def nginx_t_like(staged):
    """nginx -t opens the configured logs and creates the temp dirs in the directory it tests."""
    (staged / "logs/error.log").write_text("")
    (staged / "tmp/client_body").mkdir()
    return []


def lua_view_of_keys(out):
    # The runtime reads keys.json relative to the resolved lua/ directory.
    return (out / "lua/gwc/data/../../../keys.json").read_bytes()


def test_second_write_over_a_running_output_with_check(tmp_path):
    out = tmp_path / "out"
    assert output.write_output(files(1), out, nginx_t_like) == []
    running_master_state(out)
    logs_inode = (out / "logs").stat().st_ino
    assert output.write_output(files(2), out, nginx_t_like) == []
    assert (out / "nginx.conf").read_bytes() == b"# nginx.conf 2\n"
    assert json.loads((out / "lua/gwc/data/routes.json").read_bytes()) == {"version": 2}
    assert (out / "conf.d/gateway.conf").read_bytes() == b"# conf.d 2\n"
    assert (out / "logs").stat().st_ino == logs_inode, "logs/ is never moved"
    assert (out / "logs/nginx.pid").read_text() == "4242\n"
    assert (out / "logs/error.log").read_text() == "old error log\n"
    assert (out / "tmp/client_body/0000000001").read_bytes() == b"body in flight"
    assert len(list((out / output.GENERATIONS).iterdir())) == 1, "older generations are removed"
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]
    assert not [p for p in out.iterdir() if p.name.endswith((".new", ".old"))]


def test_failed_check_leaves_the_old_output_identical(tmp_path):
    out = tmp_path / "out"
    output.write_output(files(1), out)
    running_master_state(out)
    before = snapshot(out)

    def refuse(staged):
        nginx_t_like(staged)
        return [Diagnostic("GW060", "nginx -t failed")]

    assert [d.code for d in output.write_output(files(2), out, refuse)] == ["GW060"]
    assert snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]


def test_failed_write_leaves_the_old_output_identical(tmp_path):
    out = tmp_path / "out"
    output.write_output(files(1), out)
    before = snapshot(out)
    clash = dict(files(2), **{"lua": b"a file where a directory must be"})
    diags = output.write_output(clash, out)
    assert [d.code for d in diags] == ["GW050"]
    assert snapshot(out) == before


def test_first_write_that_fails_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    assert [d.code for d in output.write_output(files(1), out, lambda s: [Diagnostic("GW060", "no")])] == ["GW060"]
    assert list(tmp_path.iterdir()) == []


def old_layout(out):
    """An output written by gwc before generations: real files and directories."""
    for name, data in files(0).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    (out / "logs").mkdir()
    (out / "tmp").mkdir()
    running_master_state(out)


@pytest.mark.parametrize("exchange", ["renameat2", "unavailable"])
def test_first_write_over_an_output_of_an_older_gwc(tmp_path, monkeypatch, exchange):
    out = tmp_path / "out"
    out.mkdir()
    old_layout(out)
    if exchange == "unavailable":
        def no_exchange(a, b):
            raise OSError(errno.EINVAL, "Invalid argument")
        monkeypatch.setattr(output, "_exchange", no_exchange)
    assert output.write_output(files(1), out, nginx_t_like) == []
    for name in ("nginx.conf", "conf.d", "lua", "manifest.json"):
        assert (out / name).is_symlink()
    assert json.loads((out / "lua/gwc/data/routes.json").read_bytes()) == {"version": 1}
    assert json.loads(lua_view_of_keys(out))["version"] == 1
    assert (out / "logs/nginx.pid").read_text() == "4242\n"
    assert not [p for p in out.iterdir() if p.name.endswith((".new", ".old"))]


def test_keys_json_edited_in_the_deployed_output(tmp_path):
    out = tmp_path / "out"
    output.write_output(files(1), out)
    created, diags = add_consumer(out / "keys.json", "bob", "free", None)
    assert not diags and created is not None
    assert "bob" in lua_view_of_keys(out).decode(), "the gateway reads the operator's edit"
    # Documented: the next build writes keys.json from the spec's key file again.
    output.write_output(files(2), out)
    assert json.loads(lua_view_of_keys(out)) == {"consumers": {}, "version": 2}
    output.write_output(files(3, keys=False), out)
    assert not (out / "keys.json").exists()
    assert not os.path.lexists(out / "current/keys.json")


def test_no_path_is_ever_missing_while_generations_switch(tmp_path):
    out = tmp_path / "out"
    output.write_output(files(0), out)
    stop = threading.Event()
    seen = {"reads": 0, "missing": [], "versions": set()}

    def reader():
        while not stop.is_set():
            for name in ("nginx.conf", "lua/gwc/data/routes.json", "conf.d/gateway.conf", "manifest.json"):
                try:
                    with open(out / name, "rb") as f:
                        data = f.read()
                except FileNotFoundError:
                    seen["missing"].append(name)
                    continue
                seen["reads"] += 1
                if name == "manifest.json":
                    seen["versions"].add(json.loads(data)["version"])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 31):
            assert output.write_output(files(version), out) == []
    finally:
        stop.set()
        thread.join(timeout=10)
    assert seen["missing"] == []
    assert seen["reads"] > 0 and len(seen["versions"]) > 1


def test_refuses_a_directory_that_is_not_an_output(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    assert [d.code for d in output.write_output(files(1), tmp_path)] == ["GW050"]
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
