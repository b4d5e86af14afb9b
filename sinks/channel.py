"""Delivery channels: the one-method contract every channel implements, and the pieces they share.

A configured channel is opened by ``delivery.channels.open_sender``, one level up:
the channel modules import this one, so this one does not import them.

Error hierarchy::

    ChannelError                 root of this package's channel errors
    └── ChannelConfigError       a channel cannot be opened (missing or bad environment variable)

Delivery problems are not exceptions: :meth:`ChannelSender.send` turns every
answer, timeout and broken connection into a :class:`SendResult`, so the
delivery service decides about retries, backoff and rate limits in one place
for all channels (alerts.md "Tracked dispatch"). A sender makes exactly one
attempt per call, never sleeps and never looks at ``send_resolved``.

Secrets stay secret: a channel's URL may carry its token (Slack, Teams), so no
error text ever contains the URL, a secret or a credential — only the channel
name, the environment variable's name, status codes and a short, scrubbed
excerpt of what the receiver said.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import httpx

from protocol.wire import parse_retry_after
from schemas.errors import LogysteraError, UsageError

if TYPE_CHECKING:
    from schemas.alerts import ReceivedRecord
    from schemas.rules import Channel, SlackChannel, TeamsChannel, WebhookChannel

    UrlChannel = WebhookChannel | SlackChannel | TeamsChannel

USER_AGENT = "logystera-delivery/0.1.0"
MAX_RETRY_AFTER = 3600.0
"""A receiver asking for more than an hour is treated as asking for an hour: the delivery service keeps its own bound."""
_EXCERPT_BYTES = 1024
_ERROR_CHARS = 200
_TOKEN_CHARS = 16


class ChannelError(LogysteraError):
    """Root of channel errors (see the module docstring)."""


class ChannelConfigError(ChannelError, UsageError):
    """A channel cannot be opened; the message is one line naming the channel and the environment variable."""


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one attempt to deliver one notification to one channel came to."""

    delivered: bool
    status_code: int | None  # HTTP status or SMTP reply code; None when there was no answer
    retryable: bool  # timeouts, refused/reset connections, 408, 429, 5xx; SMTP 4xx/transient
    retry_after: float | None  # seconds the receiver asked for (Retry-After, delay-seconds or HTTP-date), capped at 1 h
    error: str  # short, one line, never a secret or a URL with its token; "" when delivered


class ChannelSender(Protocol):
    """One channel from channels.yaml, ready to send."""

    @property
    def config(self) -> Channel:
        """The validated channel (schemas/rules.py): name, type, rate_limit, send_resolved, ..."""
        ...

    async def send(self, notification: ReceivedRecord, collapsed: int = 0) -> SendResult:
        """Make one attempt to deliver ``notification`` (the record, and its bytes as received); never raises for delivery problems."""
        ...

    async def aclose(self) -> None:
        """Release connections; the sender is not used afterwards."""
        ...


def env_value(channel: str, variable: str, environ: Mapping[str, str], field: str) -> str:
    """The value of ``variable`` (named by the channel's ``field``); empty counts as missing."""
    value = environ.get(variable, "")
    if not value:
        raise ChannelConfigError(f"channel {channel}: {field}: environment variable {variable} is not set")
    return value


def one_line(text: str, limit: int = _ERROR_CHARS, hide: tuple[str, ...] = ()) -> str:
    """``text`` on one line, whitespace collapsed, each of ``hide`` replaced by ``<redacted>``, at most ``limit`` chars."""
    for secret in hide:
        if secret:
            text = text.replace(secret, "<redacted>")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def delivered(status_code: int | None) -> SendResult:
    """A successful attempt."""
    return SendResult(True, status_code, False, None, "")


def failed(error: str, *, status_code: int | None = None, retryable: bool, retry_after: float | None = None) -> SendResult:
    """An unsuccessful attempt; ``retry_after`` is capped at :data:`MAX_RETRY_AFTER`."""
    if retry_after is not None:
        retry_after = min(retry_after, MAX_RETRY_AFTER)
    return SendResult(False, status_code, retryable, retry_after, error)


def http_retryable(status: int) -> bool:
    """Whether an HTTP status may succeed on a later attempt.

    408 (the receiver timed out reading), 429 (slow down) and 5xx (its own
    trouble) are worth retrying; any other 4xx is a problem with the request
    or the channel's address or rights, and sending the same request again
    cannot fix it. Redirects are not followed (a webhook URL that moved is a
    configuration change to make on purpose), so 3xx is permanent too.
    """
    return status in (408, 429) or status >= 500


class HttpChannel(ABC):
    """What the HTTP channels (webhook, Slack, Teams) share: one POST per attempt, its answer as a :class:`SendResult`.

    Delivery guarantee: at most one POST per :meth:`send`; whether it reached
    the receiver is what the result says. A receiver that does not answer
    within ``timeout`` counts as a retryable failure (it may still have
    processed the request, hence webhook ids stay the same across retries).
    Under backpressure nothing queues here: the caller decides when to call again.
    """

    def __init__(self, config: UrlChannel, environ: Mapping[str, str], *, timeout: float, clock: Callable[[], float]) -> None:
        self.config = config
        self.url = self._url(environ)
        self.timeout = timeout
        self.clock = clock
        self._hide = self._secrets_in_url()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False,
                                         headers={"user-agent": USER_AGENT})

    def _url(self, environ: Mapping[str, str]) -> str:
        config = self.config
        if config.url is not None:
            return config.url
        assert config.url_env is not None  # exactly one of the two (schemas.rules)
        url = env_value(config.name, config.url_env, environ, "url_env")
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ChannelConfigError(f"channel {config.name}: url_env: environment variable {config.url_env} is not an http(s) URL")
        return url

    def _secrets_in_url(self) -> tuple[str, ...]:
        """What may hold a token: the URL, its path with query, and each path segment or query value of 16+ characters.

        Slack puts its token in the last path segment, Teams Workflows in the
        ``sig`` query value; a receiver may echo either alone. Longest first,
        so that each is replaced whole.
        """
        path = httpx.URL(self.url).raw_path.decode("ascii", "replace")
        pieces = {piece for piece in re.split(r"[/?&=]", path) if len(piece) >= _TOKEN_CHARS}
        return tuple(sorted({self.url, path, *pieces} - {"", "/"}, key=len, reverse=True))

    @abstractmethod
    def request(self, notification: ReceivedRecord, collapsed: int) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one attempt (the attempt time, if needed, from ``self.clock``)."""

    async def send(self, notification: ReceivedRecord, collapsed: int = 0) -> SendResult:
        """POST the rendered notification once; every outcome becomes a :class:`SendResult`."""
        body, headers = self.request(notification, collapsed)
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client.stream("POST", self.url, content=body, headers=headers) as response:
                    excerpt = await self._excerpt(response)
        except (TimeoutError, httpx.TimeoutException):
            return failed(f"no answer within {self.timeout:g}s", retryable=True)
        except httpx.HTTPError as error:
            return self._transport_failure(error)
        return self._result(response, excerpt)

    @staticmethod
    async def _excerpt(response: httpx.Response) -> bytes:
        """At most the first KiB of the answer: enough for an error text, bounded whatever the receiver sends."""
        data = b""
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) >= _EXCERPT_BYTES:
                break
        return data[:_EXCERPT_BYTES]

    def _result(self, response: httpx.Response, excerpt: bytes) -> SendResult:
        status = response.status_code
        if 200 <= status < 300:
            return delivered(status)
        text = excerpt.decode("utf-8", "replace").strip()
        error = one_line(f"HTTP {status}: {text}" if text else f"HTTP {status}", hide=self._hide)
        if not http_retryable(status):
            return failed(error, status_code=status, retryable=False)
        wait = parse_retry_after(response.headers.get("retry-after"), self.clock())
        return failed(error, status_code=status, retryable=True, retry_after=wait)

    def _transport_failure(self, error: httpx.HTTPError) -> SendResult:
        """No answer: a refused or broken connection is retryable; a certificate the channel does not trust is not."""
        cause: BaseException | None = error
        while cause is not None:
            if isinstance(cause, ssl.SSLCertVerificationError):
                return failed(one_line(f"TLS certificate not trusted: {cause.verify_message}", hide=self._hide), retryable=False)
            if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
                return failed("connection refused", retryable=True)
            cause = cause.__cause__ or cause.__context__
        detail = one_line(str(error), hide=self._hide)
        return failed(f"{type(error).__name__}: {detail}" if detail else type(error).__name__, retryable=True)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def json_request(body: bytes) -> tuple[bytes, dict[str, str]]:
    """A JSON body with its content type (Slack and Teams need nothing else)."""
    return body, {"content-type": "application/json"}
