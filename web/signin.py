"""Signing in to a console started with ``--users``: tokens, session cookies, and a brake on guessing.

A request names its user in one of three ways, checked in this order:

- ``Authorization: Bearer <token>`` (scripts, the API);
- ``Authorization: Basic`` with the user's name and their token as the password (``curl -u``, a browser's
  own dialog);
- the session cookie the ``/login`` form sets: ``<name>.<expiry>.<HMAC>``, HttpOnly and SameSite=Strict,
  signed over the name, the expiry and the user's token digest — so a cookie stops working when its user
  is removed from the file or given a new token, and a forged or edited one never verifies.

A request that names no one is sent to ``/login`` (a page) or answered 401 with ``WWW-Authenticate`` (the
API). A token that is wrong is 401 — the same answer whether the user name exists or not — and counts
against the client's address in :class:`FailureLimiter`; a client over its allowance gets 429 until it
has waited, whatever it sends.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from schemas.errors import UsageError
from web.access import Viewer
from web.pages import error_page, wants_json
from web.users import User, Users

SESSION_COOKIE = "logystera_session"
SESSION_SECONDS = 12 * 3600
"""How long a sign-in through the form lasts: a working day, then the token is asked for again."""
SESSION_KEY_ENV = "LOGYSTERA_WEB_SESSION_KEY"
"""The environment variable that may hold the cookie-signing key (several consoles behind one address share it)."""
CHALLENGE = 'Bearer realm="logystera", Basic realm="logystera", charset="UTF-8"'
"""The schemes a request may sign in with (an answer to a request that tried a token, or to the API)."""
FORM_CHALLENGE = 'Bearer realm="logystera"'
"""The challenge of a failed form sign-in: the same realm without Basic, which would open the browser's own dialog."""


def session_key(environ: Mapping[str, str] | None = None) -> bytes:
    """The key that signs session cookies: from :data:`SESSION_KEY_ENV` if set, else random for this process.

    Random per process is the default: nothing to configure or leak, and a restart only signs everyone out
    (they sign in again with the token they have). A console run as several processes behind one address
    needs them to agree, hence the variable; it must hold at least 32 characters.
    """
    value = (os.environ if environ is None else environ).get(SESSION_KEY_ENV)
    if value is None:
        return secrets.token_bytes(32)
    if len(value) < 32:
        raise UsageError(f"{SESSION_KEY_ENV}: must have at least 32 characters (e.g. the output of: openssl rand -hex 32)")
    return value.encode("utf-8")


@dataclass
class FailureLimiter:
    """How many wrong tokens each client address may still send: a token bucket per address, in bounded memory.

    Each address may fail ``burst`` times at once, then once per ``refill_seconds``. At most ``max_clients``
    addresses are remembered (the least recently failing are forgotten first), so a flood of addresses costs
    a bounded amount of memory. With 256-bit tokens guessing cannot succeed anyway; the brake keeps a
    guesser from costing the console CPU and filling its log.
    """

    burst: int = 10
    refill_seconds: float = 6.0
    max_clients: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict, init=False, repr=False)

    def _level(self, client: str, now: float) -> float:
        """Failures ``client`` may still make now."""
        if client not in self._buckets:
            return float(self.burst)
        left, then = self._buckets[client]
        return min(float(self.burst), left + (now - then) / self.refill_seconds)

    def wait(self, client: str) -> float:
        """Seconds before ``client`` may try again (0: now)."""
        now = self.clock()
        left = self._level(client, now)
        return 0.0 if left >= 1 else (1 - left) * self.refill_seconds

    def fail(self, client: str) -> None:
        """Count one wrong token from ``client``."""
        now = self.clock()
        self._buckets[client] = (max(0.0, self._level(client, now) - 1), now)
        self._buckets.move_to_end(client)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)


class SignIn:
    """The console's :data:`web.pages.Authenticate` when it has users: who the request is, or how to ask."""

    def __init__(self, users: Users, key: bytes, limiter: FailureLimiter | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.users = users
        self._key = key
        self.limiter = limiter or FailureLimiter()
        self._clock = clock

    async def __call__(self, request: Request) -> Viewer | Response:
        """The viewer of ``request``, or the response that asks for a token (or for patience)."""
        header = request.headers.get("authorization")
        if header is not None:
            return self.check_token(request, *_credentials(header))
        user = self.session_user(request.cookies.get(SESSION_COOKIE, ""))
        if user is not None:
            return user.viewer
        if wants_json(request) or request.method not in ("GET", "HEAD"):
            return self.challenge(request, "Sign in", "Send a token: Authorization: Bearer <token>, or HTTP Basic.")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)

    def check_token(self, request: Request, name: str | None, token: str | None) -> Viewer | Response:
        """The viewer whose token (and, with Basic, name) this is; else 401, counted against the client, or 429."""
        client = client_of(request)
        wait = self.limiter.wait(client)
        if wait > 0:
            return too_many(request, wait)
        user = self.users.by_token(token) if token is not None else None
        if user is None or (name is not None and not hmac.compare_digest(name.encode(), user.name.encode())):
            self.limiter.fail(client)
            return self.challenge(request, "Sign-in failed", "This token is not valid for this console.")
        return user.viewer

    def challenge(self, request: Request, title: str, detail: str) -> Response:
        """401 with the schemes this console accepts."""
        response = error_page(request, 401, title, detail)
        response.headers["www-authenticate"] = CHALLENGE
        return response

    # -- session cookies ------------------------------------------------------------------------------

    def _signature(self, name: str, expiry: int, user: User) -> str:
        message = f"{name}\n{expiry}\n{user.digest.hex()}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def session_value(self, user: User) -> str:
        """A session cookie value for ``user``, valid for :data:`SESSION_SECONDS`."""
        expiry = int(self._clock()) + SESSION_SECONDS
        return f"{user.name}.{expiry}.{self._signature(user.name, expiry, user)}"

    def session_user(self, value: str) -> User | None:
        """The user a session cookie value was signed for, if it verifies and has not expired."""
        parts = value.rsplit(".", 2)
        if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit() and len(parts[1]) <= 12):
            return None
        name, expiry_text, signature = parts
        user = self.users.named(name)
        if user is None:
            return None
        expiry = int(expiry_text)
        if not hmac.compare_digest(signature.encode(), self._signature(name, expiry, user).encode()):
            return None
        return user if self._clock() < expiry else None


def _credentials(header: str) -> tuple[str | None, str | None]:
    """``(name, token)`` of an Authorization header: name only with Basic; ``(None, None)`` when unreadable."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return None, value
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        name, colon, token = decoded.partition(":")
        if colon:
            return name, token
    return None, None


def client_of(request: Request) -> str:
    """The address failed sign-ins are counted against (the peer; behind a proxy, the proxy's — docs/web.md)."""
    return request.client.host if request.client is not None else "unknown"


def too_many(request: Request, wait: float) -> Response:
    """429: this client sent too many wrong tokens; it may try again after ``wait`` seconds."""
    seconds = max(1, math.ceil(wait))
    response = error_page(request, 429, "Too many failed sign-ins", f"Try again in {seconds} s.")
    response.headers["retry-after"] = str(seconds)
    return response
