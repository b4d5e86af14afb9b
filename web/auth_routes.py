"""``/login`` and ``/logout``: the sign-in form of a console started with ``--users`` (web/signin.py).

The form posts the token (``form#login``, field ``token``); a valid one sets the session cookie and goes on
to the page the visitor asked for. Cross-site posts are refused twice over: the cookie is SameSite=Strict
(another site's form never carries it) and a POST whose ``Origin`` names another host is answered 403
before its body is read.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from web.pages import config_of, error_page, page
from web.signin import FORM_CHALLENGE, SESSION_COOKIE, SESSION_SECONDS, SignIn, client_of, too_many

MAX_FORM_BYTES = 4096
"""A sign-in form is a token and a path; a larger body is refused unread."""
HOME = "/alerts"


def _sign_in(request: Request) -> SignIn | None:
    gate = config_of(request).authenticate
    return gate if isinstance(gate, SignIn) else None


def _next(target: str | None) -> str:
    """Where to go after signing in: a path on this console only (never ``//host`` or a full URL)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return HOME
    return target


def _same_origin(request: Request) -> bool:
    """Whether a POST comes from this console's own pages (or from a client that sends no ``Origin``, like curl)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.headers.get("host", "")


async def _form(request: Request) -> dict[str, str] | None:
    """The urlencoded fields of the body (first value each), or ``None`` past :data:`MAX_FORM_BYTES`."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True, max_num_fields=10)
    return {name: values[0] for name, values in fields.items()}


def _login_page(request: Request, target: str, message: str | None = None, status_code: int = 200) -> Response:
    return page(request, "login.html", {"next": target, "message": message}, status_code)


async def login_form(request: Request) -> Response:
    """The sign-in form (or straight on, when already signed in or when the console has no users)."""
    sign_in = _sign_in(request)
    target = _next(request.query_params.get("next"))
    if sign_in is None or sign_in.session_user(request.cookies.get(SESSION_COOKIE, "")) is not None:
        return RedirectResponse(target, status_code=303)
    return _login_page(request, target)


async def login(request: Request) -> Response:
    """Check the posted token; a valid one sets the session cookie and redirects to ``next``."""
    sign_in = _sign_in(request)
    if sign_in is None:
        return RedirectResponse(HOME, status_code=303)
    if not _same_origin(request):
        return error_page(request, 403, "Forbidden", "A sign-in must come from this console's own form.")
    client = client_of(request)
    wait = sign_in.limiter.wait(client)
    if wait > 0:
        return too_many(request, wait)
    fields = await _form(request)
    if fields is None:
        return error_page(request, 413, "Too large", "A sign-in form holds only a token.")
    target = _next(fields.get("next"))
    user = sign_in.users.by_token(fields.get("token", "").strip())
    if user is None:
        sign_in.limiter.fail(client)
        response = _login_page(request, target, "This token is not valid for this console.", 401)
        response.headers["www-authenticate"] = FORM_CHALLENGE
        return response
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE, sign_in.session_value(user), max_age=SESSION_SECONDS, path="/",
        httponly=True, samesite="strict", secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    """Forget the session cookie and go back to the form."""
    if not _same_origin(request):
        return error_page(request, 403, "Forbidden", "A sign-out must come from this console's own pages.")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


ROUTES = [
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
