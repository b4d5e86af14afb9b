"""What every page of the console shares: its configuration, the reads of a request, rendering, error answers.

Route modules (``web/alert_page.py`` …) import these from here, and ``web/app.py`` imports the route modules:
kept apart from the application, the helpers give no import cycle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.templating import Jinja2Templates

from schemas.rule_loader import RuleSet
from sinks.clickhouse import Store
from web.access import EVERYONE, Viewer
from web.reads import Reads

HERE = Path(__file__).resolve().parent
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    # Not no-referrer: under it browsers send ``Origin: null`` with the sign-in form's POST, which the same-origin
    # check must refuse. same-origin sends nothing to other sites and the real origin to this one.
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}

Authenticate = Callable[[Request], Awaitable["Viewer | Response"]]
"""Who is asking: the viewer, or the response that asks them to sign in (401) — see web/access.py."""


async def _everyone(request: Request) -> Viewer:
    return EVERYONE


@dataclass
class ConsoleConfig:
    """What one console serves: the store, the loaded rules, and who may read what."""

    store: Store
    ruleset: RuleSet
    store_dsn: str
    """The ``--store`` the console was started with, as the reproduce commands on the alert page name it."""
    rules_dir: str = "rules"
    authenticate: Authenticate = _everyone


templates = Jinja2Templates(env=Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True))
"""Every template is autoescaped, whatever its name: a ``<script>`` in a signal field is shown as text."""


def config_of(request: Request) -> ConsoleConfig:
    """The console's configuration, from the application state."""
    config: ConsoleConfig = request.app.state.config
    return config


def reads_for(request: Request) -> Reads:
    """The store, as the request's viewer may read it."""
    return Reads(config_of(request).store, request.state.viewer)


def page(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> Response:
    """A rendered page; every template gets the request and its viewer."""
    return templates.TemplateResponse(
        request, template, {"viewer": getattr(request.state, "viewer", None), **context}, status_code=status_code,
    )


def wants_json(request: Request) -> bool:
    """Whether the request is one of the API's (answered in JSON, errors included)."""
    return request.url.path.startswith("/api/")


def error_page(request: Request, status_code: int, title: str, detail: str) -> Response:
    """The answer to a request that cannot be served: a page that says why in words (JSON under ``/api/``)."""
    if wants_json(request):
        return JSONResponse({"error": title, "detail": detail}, status_code=status_code, headers=SECURITY_HEADERS)
    return page(request, "error.html", {"status": status_code, "title": title, "detail": detail}, status_code)
