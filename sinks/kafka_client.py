"""What every Logystera Kafka client shares: producer guarantees, error reporting, the metadata check, consumer setup.

The gateway (signals and ticks in), ``detect`` (notifications out, signals
in) and ``deliver`` (notifications in) each build their own client, but from
these settings: a guarantee or a partitioner changed here changes for all of
them, and a broker that does not answer is one error, :class:`KafkaUnreachable`,
wherever it is met. No Bytewax here: the gateway and ``deliver`` import this
module without loading a dataflow engine.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from schemas.errors import Failure

PRODUCER_GUARANTEES: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}
"""Settings no configuration may override: idempotent, acknowledged by every in-sync replica (no duplicates or
reordering from a producer's own retries); every acknowledgement to a site and every committed epoch rests on them."""

PRODUCER_DEFAULTS: dict[str, Any] = {
    # Java clients' default partitioner: a site's key maps to the same partition whichever client writes it.
    "partitioner": "murmur2_random",
    # A misspelt topic must fail (or get 503s), not become a new empty topic on a broker that auto-creates topics.
    "allow.auto.create.topics": False,
}
"""Settings every producer starts from (the gateway lets ``--kafka-option`` change them)."""


class KafkaUnreachable(Failure):
    """The broker did not answer a metadata request in time (exit 1: the run cannot go on without it)."""

    def __init__(self, bootstrap: str, timeout: float, detail: str) -> None:
        super().__init__(f"Kafka at {bootstrap} did not answer within {timeout:g}s ({detail})")


def producer_config(bootstrap: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A producer's settings: the defaults, then ``options``, then the guarantees, which nothing overrides."""
    return {**PRODUCER_DEFAULTS, **(options or {}), **PRODUCER_GUARANTEES, "bootstrap.servers": bootstrap}


def consumer_config(bootstrap: str, group: str, report: Callable[[str], None]) -> dict[str, Any]:
    """A consumer that commits only what it is told to (never automatically), starting at the beginning when it has no offset."""
    return {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", **reported_once(report)}


def _print(text: str) -> None:
    print(f"kafka: {text}", file=sys.stderr, flush=True)


def reported_once(report: Callable[[str], None] = _print, fatal: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Client settings that report each kind of librdkafka error once, until it changes.

    librdkafka logs every failed connection attempt, hundreds of lines a second
    while a broker is away; the errors still reach ``report``, one line per
    kind. A fatal error (the client is unusable for good) goes to ``fatal``
    instead, when given, every time.
    """
    last: list[int | None] = [None]

    def on_error(error: KafkaError) -> None:
        if fatal is not None and error.fatal():
            fatal(error.str())
        elif error.code() != last[0]:
            report(error.str())
        last[0] = error.code()

    return {"log_level": 2, "error_cb": on_error}


def list_topics(client: Any, bootstrap: str, timeout: float) -> dict[str, Any]:
    """Every topic of the cluster (name → metadata), from a fresh metadata request; :class:`KafkaUnreachable` if none comes.

    Lists every topic instead of asking for the ones named: a metadata request
    naming a topic creates it on brokers that auto-create topics. ``client`` is
    a producer, consumer or admin client (each has ``list_topics``).
    """
    try:
        return dict(client.list_topics(timeout=timeout).topics)
    except KafkaException as error:
        raise KafkaUnreachable(bootstrap, timeout, error.args[0].str()) from None
