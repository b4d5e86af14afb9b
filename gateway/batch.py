"""From a verified request body to the signals to write and the ones refused, each with its reason.

The batch envelope (``site``, ``batch_id``, ``sent_at``, ``signals``) must be
right or the whole request is refused; inside it each signal stands alone: a
bad one is listed in the answer and the rest are written. Each signal is
re-encoded as compact JSON (key order, the ``ts`` string and explicit nulls
kept, as evidence keeps them; docs/decisions.md 6) and checked by
:func:`schemas.records.parse_lines`, the one implementation of the signal
contract that replay uses too; the compact bytes are what goes to Kafka.

Two checks exist only here. A body nested deeper than :data:`MAX_DEPTH` is
refused whole before anything walks it recursively (JSON encoders and
validators recurse once per level, and how deep they get before Python's
recursion limit depends on the stack they start from). And a signal dated
further ahead of the gateway's clock than ``--max-future`` is refused: the
gateway is the one place where a wall clock may judge a signal, and a
far-future ``ts`` would move its site's clocks in the engine past every
later record.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.auth import BATCH_ID_RE
from gateway.errors import Rejected
from gateway.registry import Site
from schemas.excerpt import clip
from schemas.problems import validation_problems
from schemas.records import KeyedObject, compact_json, keyed_object, parse_lines
from schemas.timestamps import TS_PATTERN, format_ts, ts_problem

MAX_DEPTH = 16
"""Containers a body may nest: a valid batch needs 5 (body, ``signals``, a signal, ``data``, ``flags``)."""


class BatchEnvelope(BaseModel):
    """The request body around the signals (docs/protocol.md §1); signals are checked one by one afterwards."""

    model_config = ConfigDict(extra="forbid", strict=True)
    site: str
    batch_id: Annotated[str, Field(pattern=f"^{BATCH_ID_RE.pattern}$")]
    sent_at: Annotated[str, Field(pattern=TS_PATTERN)]
    signals: Annotated[list[Any], Field(min_length=1)]


@dataclass(frozen=True)
class ParsedBatch:
    """The signals to write, as ``(id, compact JSON bytes)`` in batch order, and ``(index, reason label, message)`` per refusal."""

    accepted: list[tuple[str, bytes]]
    rejected: list[tuple[int, str, str]]

    def answer(self) -> dict[str, Any]:
        """The ``200`` body once every accepted signal is written (docs/protocol.md §2)."""
        return {
            "accepted": len(self.accepted),
            "rejected": [{"index": index, "reason": message} for index, _, message in self.rejected],
            "duplicate": False,
        }


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_deep() -> Rejected:
    return Rejected("invalid_json", f"body: nested more than {MAX_DEPTH} levels deep")


def _shape(document: Any, limit: int) -> tuple[bool, int]:
    """Whether a parsed JSON value nests containers more than ``limit`` levels deep, and how many keys its objects hold.

    Walked level by level (no recursion), keeping only containers from one level to the next; the value comes from
    a plain ``json.loads``, so every container is exactly a ``dict`` or a ``list``.
    """
    level: list[Any] = [document] if type(document) in (dict, list) else []
    keys = 0
    for _ in range(limit):
        if not level:
            return False, keys
        below: list[Any] = []
        for value in level:
            if type(value) is dict:
                keys += len(value)
                value = value.values()
            below += [child for child in value if type(child) is dict or type(child) is list]
        level = below
    return bool(level), keys


_KEY_ENDS = re.compile(rb'"[ \t\n\r]*:')
"""Where a key can end: every key of a JSON text is followed by one (strings may hold more)."""


def _repeated_key(signal: Any) -> str | None:
    """The path of a key a signal gives twice (envelope or ``data``): re-encoding it would silently keep the last value."""
    if isinstance(signal, KeyedObject) and signal.repeated is not None:
        return clip(signal.repeated)
    data = signal.get("data") if isinstance(signal, dict) else None
    if isinstance(data, KeyedObject) and data.repeated is not None:
        return f"data.{clip(data.repeated)}"
    return None


def parse_batch(body: bytes, site: Site, batch_id: str, max_signals: int) -> list[Any]:
    """The signals of a body whose signature holds for ``site`` and ``batch_id`` (the ``webhook-id``), not checked yet."""
    try:
        text = body.decode("utf-8")
        document = json.loads(text, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise Rejected("invalid_json", "body: not UTF-8") from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError as error:
        raise Rejected("invalid_json", f"body: not valid JSON: {error}") from None
    too_deep, keys = _shape(document, MAX_DEPTH)
    if too_deep:
        raise _too_deep()
    if body.count(b'":') != keys and len(_KEY_ENDS.findall(body)) != keys:
        # Every key ends in a match and strings may add more; a repeated key leaves its object one key short. Equal
        # counts prove no key repeats (the usual case: compact JSON, where '":' alone already counts the keys);
        # otherwise parse again keeping each object's repeated key.
        document = json.loads(text, parse_constant=_no_constants, object_pairs_hook=keyed_object)
    if isinstance(document, KeyedObject) and document.repeated is not None:
        # The signature covers the bytes, but another reader could take the first value where json keeps the last.
        raise Rejected("invalid_batch", f"{clip(document.repeated)}: given more than once")
    signals = document.get("signals") if isinstance(document, dict) else None
    if isinstance(signals, list) and len(signals) > max_signals:
        raise Rejected("too_many_signals", f"signals: {len(signals)} signals, more than the {max_signals} a batch may hold")
    try:
        envelope = BatchEnvelope.model_validate(document)
    except ValidationError as error:
        name, message = next(validation_problems(error))
        sent_at = document.get("sent_at") if isinstance(document, dict) else None
        if name == "sent_at" and isinstance(sent_at, str) and message.startswith("must match"):
            message = ts_problem(sent_at)  # the pattern itself is 150 characters of regular expression
        raise Rejected("invalid_batch", f"{name}: {message}") from None
    if envelope.site != site.id:
        # The signature was checked for the site the body starts with; a later "site" member may not override it.
        raise Rejected("invalid_batch", "site: given more than once")
    if envelope.batch_id != batch_id:
        raise Rejected("batch_id_mismatch", "batch_id: must equal the webhook-id header")
    return envelope.signals


def check_signals(signals: list[Any], site: Site, latest_ts: int, max_future_s: int) -> ParsedBatch:
    """Refuse ticks, other sites' and switched-off types' signals, then check the rest against the contract.

    ``latest_ts`` is the last instant (epoch ms) a signal may carry: the
    gateway's clock plus ``max_future_s`` (``--max-future``).
    """
    rejected: list[tuple[int, str, str]] = []
    candidates: list[tuple[int, bytes]] = []
    for index, signal in enumerate(signals):
        repeated = _repeated_key(signal)
        if repeated is not None:
            rejected.append((index, "invalid", f"{repeated}: key given more than once"))
            continue
        if isinstance(signal, dict):
            kind, owner = signal.get("type"), signal.get("site")
            if kind == "tick":
                rejected.append((index, "tick", "type: ticks are written by the gateway, never sent by a site"))
                continue
            if owner != site.id:
                rejected.append((index, "site_mismatch", f"site: must be the batch's site {site.id!r}"))
                continue
            if kind in site.disabled_types:
                rejected.append((index, "type_disabled", f"type: {kind!r} is switched off for this site"))
                continue
        candidates.append((index, compact_json(signal).encode("utf-8")))
    records, invalid = parse_lines(candidates)[:2]  # the records and the (index, reason) of each invalid one
    rejected.extend((index, "invalid", reason) for index, reason in invalid)
    accepted: list[tuple[str, bytes]] = []
    first_of: dict[str, int] = {}
    for record in records:
        if record.ts > latest_ts:
            rejected.append((record.line, "future_ts", f"ts: {format_ts(record.ts)} is more than {max_future_s} s ahead of the gateway's "
                                                       "clock (check the site's clock)"))
            continue
        earlier = first_of.setdefault(record.id, record.line)
        if earlier != record.line:
            rejected.append((record.line, "duplicate_id", f"id: the same as signals[{earlier}]"))
            continue
        accepted.append((record.id, record.raw))
    rejected.sort()
    return ParsedBatch(accepted, rejected)
