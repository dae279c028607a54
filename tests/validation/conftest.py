"""Validation tests: the compiler in Python, the generated Lua in a real nginx worker."""
import pytest
from support.lua_runner import LuaRunner


@pytest.fixture(scope="session")
def lua():
    """One nginx for the whole session; `lua.run(chunk)` returns the chunk's JSON-encodable result."""
    runner = LuaRunner()
    runner.start()
    yield runner
    runner.stop()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "lua" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.live)
