"""The store in tests (a pytest plugin): one chDB directory per session, a database per test, and a ClickHouse HTTP front.

chDB opens one data directory per process, so every in-process store of the
session lives in ``chdb_dir`` and tests are isolated by database. Tests that
need a directory of their own (locking, the CLI) run the store in a subprocess.

The front speaks the part of ClickHouse's HTTP protocol clickhouse-connect
uses (queries, commands, Native inserts, compressed bodies, basic auth) and
hands every statement to chDB, so the HTTP store path runs against a real
engine without a server installation.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import re
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import chdb
import lz4.frame
import pytest

from sinks.clickhouse import Store

TTL_DAYS = 3650
"""Test tables keep rows for 10 years: the corpora are dated, and a 30-day TTL would delete them at the next merge."""

_databases = itertools.count()


def database_name(label: str) -> str:
    """A fresh database name for one test (letters, digits, underscores)."""
    return f"t{next(_databases)}_{re.sub(r'[^A-Za-z0-9_]', '_', label)}"[:60]


# -- a ClickHouse HTTP interface in front of the session's chDB engine -------------------------------

_FORMAT = re.compile(rb"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_INSERT = re.compile(rb"^\s*INSERT\s+INTO\s+(.+?)\s+FORMAT\s+Native[ \t]*\r?\n", re.IGNORECASE | re.DOTALL)


@dataclass
class HttpFront:
    """What the front saw and how it should misbehave; the engine behind it is real chDB."""

    port: int
    username: str
    password: str
    requests: list[tuple[str, str, str | None, str]] = field(default_factory=list)
    """(user, password, database parameter, first line of the SQL) per request."""
    fail_inserts: int = 0
    """Answer this many coming INSERTs with a server error, as a replica in read-only mode would."""


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    front: HttpFront
    connection_lock: threading.Lock
    engine: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _credentials(self) -> tuple[str, str]:
        authorization = self.headers.get("Authorization", "")
        if authorization.startswith("Basic "):
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            return user, password
        return self.headers.get("X-ClickHouse-User", "default"), self.headers.get("X-ClickHouse-Key", "")

    def _reply(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: int, message: str) -> None:
        self._reply(status, f"Code: {code}. DB::Exception: {message}\n".encode(), (("X-ClickHouse-Exception-Code", str(code)),))

    def _serve(self) -> None:
        params = {name: values[-1] for name, values in parse_qs(urlsplit(self.path).query).items()}
        body = self._body()
        encoding = self.headers.get("Content-Encoding")
        if encoding == "lz4":
            body = lz4.frame.decompress(body)
        elif encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding:
            self._error(400, 1, f"content encoding {encoding} is not supported by the test front")
            return
        sql = params.get("query", "").encode() + body
        user, password = self._credentials()
        front = self.front
        front.requests.append((user, password, params.get("database"), sql.split(b"\n", 1)[0].decode(errors="replace")))
        if (user, password) != (front.username, front.password):
            self._error(403, 516, f"{user}: Authentication failed: password is incorrect, or there is no user with such name. "
                        "(AUTHENTICATION_FAILED)")
            return
        insert = _INSERT.match(sql)
        if insert and front.fail_inserts > 0:
            front.fail_inserts -= 1
            self._error(500, 242, "Table is in readonly mode. (TABLE_IS_READ_ONLY)")
            return
        try:
            with self.connection_lock:
                self.engine.query(f"USE {params.get('database') or 'default'}")
                if insert:
                    # The HTTP body is the statement, a newline, then Native data: hand the data to chDB as a file.
                    with tempfile.NamedTemporaryFile(suffix=".native") as data:
                        data.write(sql[insert.end():])
                        data.flush()
                        self.engine.query(f"INSERT INTO {insert.group(1).decode()} FROM INFILE '{data.name}' FORMAT Native")
                    self._reply(200, b"")
                    return
                named = _FORMAT.search(sql)
                output_format = named.group(1).decode() if named else params.get("default_format", "TabSeparated")
                # Server-side parameters ({name:Type} placeholders) travel as param_<name> in the URL.
                bound = {name[len("param_"):]: value for name, value in params.items() if name.startswith("param_")}
                result = self.engine.query(sql.decode(), output_format, params=bound or None)
        except Exception as error:  # the engine's own error, passed on as the server would
            text = str(error).strip()
            code = re.search(r"Code: (\d+)", text)
            self._reply(500, text.encode(), (("X-ClickHouse-Exception-Code", code.group(1) if code else "1000"),))
            return
        self._reply(200, result.bytes() or b"", (("X-ClickHouse-Format", output_format),))


# -- fixtures ---------------------------------------------------------------------------------------


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
