"""The console's Starlette application: routes, the viewer of each request, security headers, error pages.

Pages are rendered on the server (Jinja2, autoescaped): every value from a signal reaches the browser as
text. The console serves its own style sheet and needs no script (charts are SVG drawn here), so the
Content-Security-Policy allows nothing inline and nothing from another host.
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sinks.clickhouse import StoreUnavailable
from web import alert_page, auth_routes, lists, silences_page
from web.pages import (
    HERE,
    SECURITY_HEADERS,
    Authenticate,
    ConsoleConfig,
    config_of,
    error_page,
    page,
    reads_for,
    templates,
    wants_json,
)

__all__ = [
    "SECURITY_HEADERS", "Authenticate", "ConsoleConfig", "config_of", "create_app", "error_page", "page", "reads_for",
    "routes", "templates", "wants_json",
]


PUBLIC = frozenset({"/healthz", "/login", "/logout"})
"""Paths served without a viewer (besides ``/static/``): liveness, and signing in and out (web/auth_routes.py)."""


class _Viewer(BaseHTTPMiddleware):
    """Sets ``request.state.viewer`` (or answers the sign-in response) and adds the security headers."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path.startswith("/static/") or request.url.path in PUBLIC:
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
    viewer = getattr(request.state, "viewer", None)
    if status == 404 and viewer is not None and not viewer.sees_everything:
        # Said on every 404 of a viewer with a site list, so it tells nothing about any one address (docs/web.md, Access).
        detail += " Pages of sites outside your account's list are not found either."
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
    return [
        Route("/healthz", healthz),
        *auth_routes.ROUTES,
        *alert_page.ROUTES,
        *lists.ROUTES,
        *silences_page.ROUTES,
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
