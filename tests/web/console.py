"""A real console for tests: :func:`web.app.create_app` under uvicorn in a thread, on a free loopback port."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from tests.support.polling import wait_for
from web.app import ConsoleConfig, create_app

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
