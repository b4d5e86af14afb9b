"""Fixtures for the store tests: one chDB directory per test session, a database per test, and a ClickHouse HTTP front.

chDB opens one data directory per process, so every in-process store of the
session lives in ``chdb_dir`` and tests are isolated by database. Tests that
need a directory of their own (locking, the CLI) run the store in a subprocess.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import chdb
import pytest
from store_support import TTL_DAYS, FrontHandler, HttpFront, database_name

from sinks.clickhouse import Store


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one chDB directory this process opens."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def store_dsn(chdb_dir: Path, request: pytest.FixtureRequest) -> str:
    """A DSN naming a database no other test uses."""
    return f"chdb://{chdb_dir}?database={database_name(request.node.name)}"


@pytest.fixture
def store(store_dsn: str) -> Store:
    """A migrated embedded store in a database of its own."""
    return Store.open(store_dsn, ttl_days=TTL_DAYS)


@pytest.fixture(scope="session")
def _http_front_server(chdb_dir: Path) -> Iterator[tuple[ThreadingHTTPServer, type[FrontHandler]]]:
    engine = chdb.connect(str(chdb_dir))
    handler = type("FrontHandler", (FrontHandler,), {"engine": engine, "connection_lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="clickhouse-http-front", daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        engine.close()


@pytest.fixture
def http_front(_http_front_server: tuple[ThreadingHTTPServer, type[FrontHandler]]) -> HttpFront:
    """A ClickHouse HTTP interface on loopback (user ``ana+ops``, password ``p@ss:w/rd``), fresh state per test."""
    server, handler = _http_front_server
    handler.front = HttpFront(port=server.server_address[1], username="ana+ops", password="p@ss:w/rd")
    return handler.front
