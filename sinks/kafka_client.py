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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException

from schemas.errors import Failure, Problems

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


CONNECT_AT_ONCE: dict[str, str] = {"enable.sparse.connections": "false"}
"""Connect to each broker as soon as it is known, not when a request first needs it.

With librdkafka's sparse connections, a client that has just learnt the brokers from the bootstrap server holds
its first request for librdkafka's next connection slot, ~50 ms (an interval it derives from ``reconnect.backoff.ms``):
measured on the test broker, one metadata request in three took 53 ms instead of 1–3 ms. A ``detect`` start makes several clients one
after the other (the topic check, the partition listing, a consumer per partition, the alerts producer)."""

CONSUMER_DEFAULTS: dict[str, Any] = {
    # How long the broker may hold a fetch that found nothing new. librdkafka's 500 ms is a read's latency whenever the
    # broker answers only at the deadline (Tansu re-checks an empty partition every 250 ms); 20 ms keeps detect's p99
    # under 100 ms at the cost of up to 50 empty fetches a second per partition when idle (docs/live.md).
    "fetch.wait.max.ms": 20,
    **CONNECT_AT_ONCE,
}
"""Settings every consumer starts from (``detect`` and ``deliver`` let ``--kafka-option`` change them)."""

OWNED: frozenset[str] = frozenset({"bootstrap.servers", "group.id", "enable.auto.commit", "enable.partition.eof",
                                   *PRODUCER_GUARANTEES})
"""Settings ``detect`` and ``deliver`` set themselves: offsets are theirs to keep, the guarantees nobody's to weaken."""


class KafkaUnreachable(Failure):
    """The broker did not answer a metadata request in time (exit 1: the run cannot go on without it)."""

    def __init__(self, bootstrap: str, timeout: float, detail: str) -> None:
        super().__init__(f"Kafka at {bootstrap} did not answer within {timeout:g}s ({detail})")


def producer_config(bootstrap: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A producer's settings: the defaults, then ``options``, then the guarantees, which nothing overrides."""
    return {**PRODUCER_DEFAULTS, **(options or {}), **PRODUCER_GUARANTEES, "bootstrap.servers": bootstrap}


def consumer_config(bootstrap: str, group: str, report: Callable[[str], None],
                    options: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A consumer that commits only what it is told to (never automatically), starting at the beginning when it has no offset.

    ``options`` (checked by :func:`client_options`) change :data:`CONSUMER_DEFAULTS` and anything else but :data:`OWNED`.
    """
    return {**CONSUMER_DEFAULTS, "auto.offset.reset": "earliest", **(options or {}), "bootstrap.servers": bootstrap,
            "group.id": group, "enable.auto.commit": False, **reported_once(report)}


def parse_kafka_options(values: Iterable[str], problems: list[str]) -> dict[str, str]:
    """``--kafka-option KEY=VALUE`` items as a dict (a later KEY wins); each malformed item adds a whole line to ``problems``."""
    options: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            problems.append(f"logystera: error: --kafka-option: {name.strip() or item!r} is not KEY=VALUE")
            continue
        options[name.strip()] = value
    return options


def client_options(values: Iterable[str]) -> dict[str, str]:
    """``detect``'s and ``deliver``'s ``--kafka-option`` items, checked before anything connects.

    A malformed item, a setting of :data:`OWNED`, and a key or value librdkafka
    refuses (asked by building a consumer that connects nowhere) are each one
    line, exit 2 (:class:`schemas.errors.Problems`), instead of a failure inside
    a running flow.
    """
    problems: list[str] = []
    options = parse_kafka_options(values, problems)
    problems += [f"logystera: error: --kafka-option: {name}: set by logystera, cannot be changed" for name in options if name in OWNED]
    if not problems:
        try:
            Consumer({"group.id": "logystera-option-check", **options, **reported_once(lambda _text: None)}).close()
        except KafkaException as error:
            problems.append(f"logystera: error: --kafka-option: {error.args[0].str()}")
    if problems:
        raise Problems(problems)
    return options


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


def metadata_client_settings(options: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings of a short-lived client that only reads the cluster's metadata (a topic check, a partition listing).

    The command's ``--kafka-option`` settings reach it (security settings must; consumer-only ones are ignored
    quietly at librdkafka's log level 2), it connects at once (:data:`CONNECT_AT_ONCE`), and its errors are left to
    the request that fails: an unreachable broker is reported once, by that request's exception.
    """
    return {**CONNECT_AT_ONCE, **(options or {}), **reported_once(lambda _text: None)}


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
