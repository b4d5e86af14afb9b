"""Signal envelope and payload models: the input contract (signals.md, version 1).

Every model forbids extra fields and validates strictly (``1.0``, ``"1"`` and
``true`` are not integers), which is how the privacy contract is enforced: a
payload field named ``email``, ``body`` or ``message`` is rejected, never kept.

The hot path validates raw JSON bytes against one discriminated union
(:data:`SIGNAL_ADAPTER`) instead of building a dict first.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from schemas.integers import MAX_SAFE_INTEGER
from schemas.timestamps import TS_PATTERN

STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)

Hash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# `path`, `file` and `job`: no `?`, `#`, `@`, no whitespace but plain spaces, no control characters.
SAFE_PATH_PATTERN = r"^(?:[^?#@\s\x00-\x1f\x7f-\x9f]| )*$"
SafeInt = Annotated[int, Field(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]
NonNegative = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]


Str32 = Annotated[str, Field(max_length=32)]
Str64 = Annotated[str, Field(max_length=64)]
Str128 = Annotated[str, Field(max_length=128)]
Str256 = Annotated[str, Field(max_length=256)]
SafePath128 = Annotated[str, Field(max_length=128, pattern=SAFE_PATH_PATTERN)]
SafePath256 = Annotated[str, Field(max_length=256, pattern=SAFE_PATH_PATTERN)]


class AuthData(BaseModel):
    """An authentication attempt: identities only as hashes or network prefixes."""

    model_config = STRICT
    outcome: Literal["success", "failure", "lockout", "logout"]
    method: Literal["password", "app_password", "cookie", "xmlrpc", "rest", "sso", "other"]
    user_hash: Hash | None = None
    user_len: Annotated[int, Field(ge=0, le=256)] | None = None
    source: Str64 | None = None
    privileged: bool | None = None


class MailData(BaseModel):
    """An outbound mail attempt (never the message, never the address)."""

    model_config = STRICT
    outcome: Literal["sent", "failed", "deferred", "bounced"]
    transport: Str32
    error_class: Str64 | None = None


class CronData(BaseModel):
    """A scheduled job's lifecycle event."""

    model_config = STRICT
    job: SafePath128
    event: Literal["started", "finished", "failed", "missed", "heartbeat"]
    duration_ms: NonNegative | None = None


class PhpErrorData(BaseModel):
    """A PHP error, identified by the hash of its normalised message."""

    model_config = STRICT
    level: Literal["fatal", "error", "warning", "notice", "deprecated", "parse"]
    component: Str128
    file: SafePath256
    line: NonNegative
    fingerprint: Hash


class ConfigChangeData(BaseModel):
    """A configuration option changed; values travel only as hashes."""

    model_config = STRICT
    option: Str128
    before_hash: Hash | None = None
    after_hash: Hash | None = None
    actor_hash: Hash | None = None
    sensitive: bool


class DbEventData(BaseModel):
    """A database event (never the query text)."""

    model_config = STRICT
    kind: Literal["slow_query", "connection_error", "deadlock", "query_error", "migration"]
    table: Str64 | None = None
    duration_ms: NonNegative | None = None


class RequestData(BaseModel):
    """The shape of one HTTP request: route, status and timing, never a query string."""

    model_config = STRICT
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "OTHER"]
    path: SafePath256
    route_group: Str64
    status: Annotated[int, Field(ge=100, le=599)]
    duration_ms: NonNegative
    ua_family: Str32 | None = None


class PluginData(BaseModel):
    """A plugin, theme, module or core lifecycle change."""

    model_config = STRICT
    slug: Str128
    kind: Literal["plugin", "theme", "module", "core"]
    action: Literal["installed", "activated", "deactivated", "updated", "deleted"]
    version_before: Str32 | None = None
    version_after: Str32 | None = None


FileFlag = Literal["php_in_uploads", "eval_call", "base64_blob", "obfuscated", "executable_bit", "core_file"]


class FileEditData(BaseModel):
    """A file edit: the size delta and fixed heuristic flags, never the file."""

    model_config = STRICT
    path: SafePath256
    change: Literal["created", "modified", "deleted"]
    size_delta: SafeInt
    flags: Annotated[list[FileFlag], Field(max_length=8, json_schema_extra={"uniqueItems": True})]

    @field_validator("flags")
    @classmethod
    def _no_repeats(cls, flags: list[str]) -> list[str]:
        """Reject repeated flags (the contract says "no repeats")."""
        if len(set(flags)) != len(flags):
            raise ValueError("flags must not repeat")
        return flags


class IntegrationData(BaseModel):
    """The site-side integration reporting on itself (heartbeats, drops)."""

    model_config = STRICT
    event: Literal["heartbeat", "dropped", "started", "stopped"]
    dropped: NonNegative | None = None
    buffered: NonNegative | None = None
    version: Str32 | None = None


class TickData(BaseModel):
    """Ticks carry no payload."""

    model_config = STRICT


PAYLOADS: dict[str, type[BaseModel]] = {
    "auth": AuthData,
    "mail": MailData,
    "cron": CronData,
    "php_error": PhpErrorData,
    "config_change": ConfigChangeData,
    "db_event": DbEventData,
    "request": RequestData,
    "plugin": PluginData,
    "file_edit": FileEditData,
    "integration": IntegrationData,
}
"""Payload model per signal type (ticks excluded: they are not a site's signal)."""

SIGNAL_TYPES: tuple[str, ...] = tuple(PAYLOADS)
MAX_SIGNAL_BYTES = 2048

SIGNAL_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
SignalId = Annotated[str, Field(pattern=SIGNAL_ID_PATTERN)]
SITE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
SiteId = Annotated[str, Field(pattern=SITE_PATTERN)]
Timestamp = Annotated[str, Field(pattern=TS_PATTERN)]
Version = Annotated[int, Field(ge=1, le=1)]
DISCRIMINATOR = "type"
"""The envelope field whose value picks the model of a signal line."""


class _Envelope(BaseModel):
    model_config = STRICT
    v: Version
    id: SignalId
    site: SiteId
    ts: Timestamp
    seq: NonNegative | None = None


def _envelope(type_name: str, payload: type[BaseModel]) -> type[_Envelope]:
    """Build the envelope model for one signal type (one class per type for the union)."""
    annotations = {DISCRIMINATOR: Literal[type_name], "data": payload}  # type: ignore[valid-type]
    namespace = {"__annotations__": annotations, "__doc__": f"A `{type_name}` signal."}
    name = "".join(part.capitalize() for part in type_name.split("_")) + "Signal"
    return type(name, (_Envelope,), namespace)


class TickSignal(_Envelope):
    """A tick: moves every rule's clock for its site; written by the gateway."""

    type: Literal["tick"]
    data: TickData = TickData()


ENVELOPES: dict[str, type[_Envelope]] = {name: _envelope(name, model) for name, model in PAYLOADS.items()}
ENVELOPES["tick"] = TickSignal

_UNION = Annotated[Union[tuple(ENVELOPES.values())], Field(discriminator=DISCRIMINATOR)]  # type: ignore[valid-type]  # noqa: UP007
SIGNAL_ADAPTER: TypeAdapter[_Envelope] = TypeAdapter(_UNION)  # type: ignore[arg-type]
"""Validates one signal's JSON bytes into its typed envelope model."""


def signals_json_schema() -> dict[str, object]:
    """The JSON Schema of one signal line, for editors and integrations."""
    schema = SIGNAL_ADAPTER.json_schema()
    schema["title"] = "Logystera signal (version 1)"
    schema["description"] = f"One JSON object per line; compact encoding at most {MAX_SIGNAL_BYTES} bytes."
    return schema
