"""``logystera web``: its options, and serving the console under uvicorn until SIGINT or SIGTERM.

Imported by ``cli/main.py`` when the parser is built: Starlette, Jinja2 and uvicorn load only when the
command runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

from schemas.errors import Failure, UsageError

if TYPE_CHECKING:
    from schemas.rule_loader import RuleSet
    from sinks.clickhouse import Store
    from web.pages import ConsoleConfig


def add_arguments(parser: argparse.ArgumentParser, default_store: str) -> None:
    """The options of ``logystera web`` (docs/web.md)."""
    parser.add_argument("--store", default=default_store, metavar="DSN", help="the store to read (default: as for sql)")
    parser.add_argument("--rules", default="rules", metavar="DIR", help="the rules whose alerts are shown")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080, as --link-base)")
    parser.add_argument("--users", metavar="FILE", help="who may sign in and which sites each may see (YAML)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    actions = parser.add_subparsers(dest="web_action", metavar="{token}")
    token = actions.add_parser("token", help="print a new random token and its lines for the --users file")
    token.add_argument("--name", default="NAME", help="the user's name in the printed lines")
    token.add_argument("--site", action="append", metavar="PATTERN", help="a site id or pattern the user may see (repeatable)")


def print_token(args: argparse.Namespace) -> int:
    """``logystera web token``: a new token (shown once, stored nowhere) and the entry for the users file."""
    import re

    from web.access import pattern_is_valid
    from web.users import NAME_PATTERN, hash_token, new_token

    if re.fullmatch(NAME_PATTERN, args.name) is None:
        raise UsageError(f"--name {args.name!r}: letters, digits, '.', '_', '@', '+', '-' (at most 64)")
    for site in args.site or []:
        if not pattern_is_valid(site):
            raise UsageError(f"--site {site!r}: must be a site id or a pattern of site ids (a-z, 0-9, '.', '_', '-', with * and ?)")
    token = new_token()
    sites = ", ".join(f'"{site}"' for site in args.site or ["SITE"])
    print(f"# token for {args.name} (give it to them; only its hash below goes in the users file):")
    print(f"# {token}")
    print(f"  - name: {args.name}\n    token_sha256: {hash_token(token)}\n    sites: [{sites}]")
    return 0


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything starts: a port in use is a one-line usage error."""
    if not 0 <= port <= 65535:
        raise UsageError("--port: must be 0–65535")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise UsageError(f"--host/--port {host}:{port}: {reason}") from None


def url_of(listener: socket.socket) -> str:
    """The console's base URL on ``listener``."""
    host, port = listener.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def run_web(args: argparse.Namespace) -> int:
    """Serve the console over ``--store`` until SIGINT/SIGTERM; 0 on a clean stop."""
    import uvicorn

    from schemas.rule_loader import load_rules
    from sinks.clickhouse import RetryPolicy, Store, StoreConfigError
    from web.app import create_app
    from web.pages import ConsoleConfig

    if args.web_action == "token":
        return print_token(args)
    if args.users is None and not is_loopback(args.host):
        raise UsageError(f"--host {args.host}: without --users the console listens on loopback only (it shows every site)")
    authenticate = None
    if args.users is not None:
        from web.signin import SignIn, session_key
        from web.users import load_users

        users = load_users(args.users)
        authenticate = SignIn(users, session_key())
    ruleset = load_rules(args.rules)
    try:
        # A person is waiting for each page: a store that does not answer is a 503 page at once, not a minute of retries.
        store = Store.open(args.store, retry=RetryPolicy(initial=0.1, give_up_after=1.0))
    except StoreConfigError as error:
        raise UsageError(f"--store: {error}") from None
    listener = bind(args.host, args.port)
    config = ConsoleConfig(store=store, ruleset=ruleset, store_dsn=args.store, rules_dir=args.rules)
    if authenticate is not None:
        config.authenticate = authenticate
    app = create_app(config)
    if authenticate is None:
        print("logystera web: no --users: every site is visible, so the console listens on loopback only", file=sys.stderr)
    else:
        print(f"logystera web: {len(authenticate.users.users)} users from {args.users}; sign in at {url_of(listener)}/login",
              file=sys.stderr)
    print(f"logystera web: serving {store.address} on {url_of(listener)}/alerts", file=sys.stderr, flush=True)
    level = getattr(logging, args.log_level.upper())
    server = uvicorn.Server(uvicorn.Config(app, log_level=level, access_log=level <= logging.INFO))
    # uvicorn stops gracefully on SIGINT/SIGTERM and then re-raises the signal; a no-op handler makes that an exit 0.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda *_: None)
    server.run(sockets=[listener])
    return 0


def web_option(text: str) -> tuple[str, int]:
    """``--web HOST:PORT`` (``[::1]:8080`` for IPv6) as (host, port), or a usage error saying why not."""
    host, colon, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit():
        raise UsageError(f"--web {text}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    if not is_loopback(host):
        raise UsageError(f"--web {text}: the console of this command listens on loopback only (it shows every site); "
                         "serve other hosts with logystera web --users")
    return host, int(port)


class ConsoleFailed(Failure):
    """The console of ``detect --web`` / ``demo --web`` could not start."""


class BackgroundConsole:
    """The console served by uvicorn in a thread of a process that does something else (``detect``, ``demo``).

    It shares that process's :class:`sinks.clickhouse.Store`: chDB lets one process open a data directory, so
    the process that writes the store is the one that can show it while it runs. Signals stay with the main
    thread (uvicorn installs no handler outside it); :meth:`stop` ends the server and waits for the thread.
    """

    START_TIMEOUT_S = 30.0
    STOP_TIMEOUT_S = 10.0

    def __init__(self, config: ConsoleConfig, listener: socket.socket, log_level: str = "warning") -> None:
        import uvicorn

        from web.app import create_app

        self.url = url_of(listener)
        level = getattr(logging, log_level.upper())
        self._server = uvicorn.Server(uvicorn.Config(create_app(config), log_level=level, access_log=level <= logging.INFO))
        self._listener = listener
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [listener]}, name="web console", daemon=True)

    def __enter__(self) -> BackgroundConsole:
        self._thread.start()
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._listener.close()
                raise ConsoleFailed(f"the web console on {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(self.STOP_TIMEOUT_S)
        self._listener.close()


def serve_console(address: str, store: Store | None, store_dsn: str, ruleset: RuleSet, rules_dir: str) -> BackgroundConsole:
    """``--web HOST:PORT`` of ``detect`` / ``demo``: the console over ``store``, bound now, served once entered."""
    from web.pages import ConsoleConfig

    host, port = web_option(address)
    if store is None:
        raise UsageError("--web: needs a --store (the console shows what is stored)")
    config = ConsoleConfig(store=store, ruleset=ruleset, store_dsn=store_dsn, rules_dir=rules_dir)
    return BackgroundConsole(config, bind(host, port))
