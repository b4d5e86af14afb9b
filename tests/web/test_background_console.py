"""``--web HOST:PORT`` of detect and demo: the option, and the console served by a thread of the process.

The console shares the process's store (chDB allows one process per data directory); it answers while
the main thread is busy with something else, and once stopped its port refuses connections.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from cli.main import main
from schemas.errors import UsageError
from schemas.rule_loader import load_rules
from sinks.clickhouse import Store
from tests.support.ports import free_port
from web.command import BackgroundConsole, serve_console, web_option

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("localhost:0", ("localhost", 0)),
    ("[::1]:9000", ("::1", 9000)),
])
def test_web_option_takes_a_loopback_host_and_a_port(text: str, expected: tuple[str, int]) -> None:
    assert web_option(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("8080", "--web 8080: expected HOST:PORT, e.g. 127.0.0.1:8080"),
    ("127.0.0.1:", "--web 127.0.0.1:: expected HOST:PORT, e.g. 127.0.0.1:8080"),
    ("127.0.0.1:http", "--web 127.0.0.1:http: expected HOST:PORT, e.g. 127.0.0.1:8080"),
    ("0.0.0.0:8080", "--web 0.0.0.0:8080: the console of this command listens on loopback only (it shows every site); "
                     "serve other hosts with logystera web --users"),
])
def test_web_option_refuses_what_is_not_a_loopback_host_and_port(text: str, message: str) -> None:
    with pytest.raises(UsageError) as raised:
        web_option(text)
    assert str(raised.value) == message


def test_the_console_needs_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--data-dir", str(tmp_path), "--store", "none", "--web", f"127.0.0.1:{free_port()}"]) == 2
    assert capsys.readouterr().err == "logystera: error: --web: needs a --store (the console shows what is stored)\n"


def test_a_port_in_use_is_a_usage_error_before_anything_runs(store: Store, store_dsn: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=rf"^--host/--port 127\.0\.0\.1:{port}: Address already in use$"):
            serve_console(f"127.0.0.1:{port}", store, store_dsn, load_rules(RULES_DIR), str(RULES_DIR))


def test_the_console_thread_serves_the_process_store_until_stopped(store: Store, store_dsn: str) -> None:
    console = serve_console("127.0.0.1:0", store, store_dsn, load_rules(RULES_DIR), str(RULES_DIR))
    assert isinstance(console, BackgroundConsole)
    with console:
        assert httpx.get(f"{console.url}/healthz").json() == {"status": "ok"}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{console.url}/healthz")


def test_only_process_0_of_a_cluster_serves_the_console(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["detect", "--bootstrap", "127.0.0.1:1", "--addresses", "127.0.0.1:2101,127.0.0.1:2102", "--process-id", "1",
            "--store", "none", "--web", "127.0.0.1:0"]
    assert main(args) == 2
    assert capsys.readouterr().err == ("logystera: error: --web: only process 0 of a cluster serves the console "
                                       "(it is the one that holds the store)\n")
