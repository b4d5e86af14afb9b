"""A real console for tests (:func:`web.app.create_app` under uvicorn in a thread), and what every answer of it must carry."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser

import httpx
import uvicorn

from tests.support.polling import wait_for
from web.app import create_app
from web.pages import CONTENT_SECURITY_POLICY, SECURITY_HEADERS, ConsoleConfig

START_TIMEOUT_S = 10.0


@contextmanager
def serving(config: ConsoleConfig) -> Iterator[str]:
    """Serve ``config`` as ``logystera web`` does (same app, same uvicorn); yields the base URL."""
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP (proto 0 costs ~40 ms a response).
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="test-console", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), "uvicorn start", START_TIMEOUT_S)
        assert thread.is_alive(), "uvicorn exited during startup"
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        listener.close()


@contextmanager
def console_client(config: ConsoleConfig, follow_redirects: bool = True) -> Iterator[httpx.Client]:
    """An HTTP client of a real console serving ``config`` (:func:`serving`), following redirects as a browser does
    unless told not to (to read a redirect itself)."""
    with serving(config) as url, httpx.Client(base_url=url, follow_redirects=follow_redirects, timeout=30) as client:
        yield client


class _Inline(HTMLParser):
    """Finds what a strict CSP would block: script and style elements, style attributes, event handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self.found.append(f"<{tag}>")
        self.found.extend(f"{tag}[{name}]" for name, _ in attrs if name == "style" or name.startswith("on"))
        self.found.extend(f"{tag}[{name}=javascript:]" for name, value in attrs if (value or "").strip().lower().startswith("javascript:"))


def inline_parts(html: str) -> list[str]:
    """Every inline script or style of a page (none is allowed)."""
    parser = _Inline()
    parser.feed(html)
    return parser.found


def assert_secured(response: httpx.Response) -> None:
    """The security headers on ``response``, and no inline script or style if it is a page."""
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.request.url, name)
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "script-src" not in CONTENT_SECURITY_POLICY  # default-src 'none'
    if response.headers.get("content-type", "").startswith("text/html"):
        assert inline_parts(response.text) == [], response.request.url
