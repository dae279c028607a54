import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
sys.path.insert(0, str(TESTS_DIR))

from support.processes import have_nginx  # noqa: E402


def pytest_configure(config):
    # Keep the validation cache of test runs away from the user's own.
    if "GWC_CACHE_DIR" not in os.environ:
        import tempfile

        os.environ["GWC_CACHE_DIR"] = tempfile.mkdtemp(prefix="gwc-test-cache-")


def pytest_collection_modifyitems(config, items):
    if have_nginx():
        return
    skip = pytest.mark.skip(reason="no nginx with the Lua module; run scripts/install-runtime")
    for item in items:
        if "live" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
