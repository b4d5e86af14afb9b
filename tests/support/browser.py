"""A real browser for the console's tests (a pytest plugin): Debian's Chromium, headless, driven by Playwright.

Playwright cannot download a browser of its own here, so it drives ``/usr/bin/chromium``
(``make test`` installs it first: ``tests/support/ensure_chromium.sh``). A missing Chromium fails the
test with the line that says how to install it; it is never a skip.

- ``chromium`` (module): one browser process per test module. Not per session: Playwright's sync API keeps
  its event loop running in the main thread until it stops, and every later test that calls
  ``asyncio.run()`` (the delivery service, the channels, the SMTP server) would fail with "cannot be
  called from a running event loop";
- ``page`` (per test): a fresh context (no cookies, no cache) and a page in it, closed after the test.

The flags keep Chromium off the network it would otherwise call on its own (updates, safe browsing,
sync, QUIC probes): the machine is offline, and every such attempt would cost time.

Import from tests as ``from tests.support.browser import ...``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
]
TIMEOUT_MS = 15_000
"""How long a Playwright action or expectation may take: generous, the machine is shared."""


def launch(playwright: Playwright) -> Browser:
    """Headless Chromium from ``/usr/bin/chromium``, or a failure that says how to install it."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run tests/support/ensure_chromium.sh (make test does)", pytrace=False)
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One headless Chromium for the module (stopped at its end, with Playwright's event loop)."""
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    """A page in a context of its own: no cookie or cache of another test leaks into it."""
    context = chromium.new_context(java_script_enabled=True)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()
