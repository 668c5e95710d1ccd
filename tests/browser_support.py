"""What the browser tests share: Debian's Chromium (headless) with the flags they need, one per test module
(the `browser` fixture, offered to every test module by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

# A declared test dependency: missing, the browser tests must fail, not quietly skip.
import playwright.sync_api as playwright_api
import pytest

CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/bootstrap.sh), not Playwright's download
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--allow-loopback-in-peer-connection",  # WebRTC between the page and vms serve on 127.0.0.1
]


@pytest.fixture(scope="module")
def browser() -> Iterator[playwright_api.Browser]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
