"""Fixtures of the real-browser suite: Debian's chromium driven by Playwright
(browser_support.py has the page servers).

Playwright from PyPI is used with the system browser (/usr/bin/chromium, or
$GWC_CHROMIUM); it never downloads one. Without playwright or chromium the
suite is skipped with the reason, unless GWC_REQUIRE_BROWSER=1 (then it fails:
for CI, where scripts/install-runtime --with-test-tools and the `test` extra
install both).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import pytest

BROWSER_DIR = Path(__file__).resolve().parent
DEFAULT_ARTIFACTS = BROWSER_DIR.parent / "artifacts"  # git-ignored
# Names under these domains resolve to loopback inside the browser only: pages on
# wildcard-subdomain origins (and lookalikes) served by the loopback page servers.
TEST_DOMAINS = ("gwc.test", "evil.test")
HOST_RULES = ", ".join(f"MAP *.{d} 127.0.0.1" for d in TEST_DOMAINS)


def _unavailable(reason: str):
    if os.environ.get("GWC_REQUIRE_BROWSER") == "1":
        pytest.fail(f"GWC_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> Optional[str]:
    """$GWC_CHROMIUM when set (and nothing else), else Debian's /usr/bin/chromium or a chromium on PATH."""
    explicit = os.environ.get("GWC_CHROMIUM")
    candidates = (explicit,) if explicit else ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def browser():
    """One headless chromium for the session."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    executable = chromium_path()
    if executable is None:
        _unavailable("no chromium at /usr/bin/chromium ($GWC_CHROMIUM; scripts/install-runtime --with-test-tools)")
    with sync_playwright() as p:
        # Root cannot use chromium's sandbox; loopback pages only.
        b = p.chromium.launch(executable_path=executable, headless=True, timeout=30_000,
                              args=["--no-sandbox", f"--host-resolver-rules={HOST_RULES}"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("GWC_ARTIFACTS_DIR") or DEFAULT_ARTIFACTS)
    path.mkdir(parents=True, exist_ok=True)
    return path
