"""Module-level tests of the runtime Lua, run inside a real nginx worker."""
import pytest

from support.lua_runner import LuaRunner


@pytest.fixture(scope="session")
def lua():
    """One nginx for the whole session; `lua.run(chunk)` returns the chunk's JSON-encodable result."""
    runner = LuaRunner(shared_dicts={"gwc_jwks": "1m", "gwc_auth": "1m"})
    runner.start()
    yield runner
    runner.stop()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/lua/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.live)
