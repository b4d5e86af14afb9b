"""The console's Starlette application: routes, the viewer of each request, security headers, error pages.

Pages are rendered on the server (Jinja2, autoescaped): every value from a signal reaches the browser as
text. The console serves its own style sheet and needs no script (charts are SVG drawn here), so the
Content-Security-Policy allows nothing inline and nothing from another host.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from schemas.rule_loader import RuleSet
from sinks.clickhouse import Store, StoreUnavailable
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
    "referrer-policy": "no-referrer",
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


class _Viewer(BaseHTTPMiddleware):
    """Sets ``request.state.viewer`` (or answers the sign-in response) and adds the security headers."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path.startswith("/static/") or request.url.path == "/healthz":
            request.state.viewer = None
            response = await call_next(request)
        else:
            who = await config_of(request).authenticate(request)
            if isinstance(who, Response):
                response = who
            else:
                request.state.viewer = who
                response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


async def healthz(request: Request) -> Response:
    """Liveness and store reachability, for compose healthchecks and load balancers (no viewer needed)."""
    try:
        config_of(request).store.query("SELECT 1")
    except StoreUnavailable:
        return JSONResponse({"status": "store unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    # A route's own words (an unknown alert id) are kept; Starlette's default phrase becomes a sentence.
    own = isinstance(exc, HTTPException) and exc.detail != HTTPStatus(status).phrase
    detail = exc.detail if own and isinstance(exc, HTTPException) else "There is no page at this address."
    return error_page(request, status, "Not found" if status == 404 else "Cannot serve this", str(detail))


async def _store_down(request: Request, exc: Exception) -> Response:
    return error_page(
        request, 503, "The store is unavailable",
        "The console cannot read the store right now; nothing is wrong with the address. Try again in a moment.",
    )


async def _failed(request: Request, exc: Exception) -> Response:
    # Never a traceback in a page: the details go to the console's log (uvicorn logs the exception).
    return error_page(request, 500, "Something went wrong", "The console could not build this page.")


def routes() -> list[Route | Mount]:
    """Every page, API endpoint and the static files."""
    from web import alert_page, lists

    return [
        Route("/healthz", healthz),
        *alert_page.ROUTES,
        *lists.ROUTES,
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]


def create_app(config: ConsoleConfig) -> Starlette:
    """The console for ``config``."""
    app = Starlette(
        routes=routes(),
        middleware=[Middleware(_Viewer)],
        exception_handlers={404: _not_found, HTTPException: _not_found, StoreUnavailable: _store_down, Exception: _failed},
    )
    app.state.config = config
    return app
