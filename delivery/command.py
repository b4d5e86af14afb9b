"""``logystera deliver``: its options, and one run of the delivery service over a file or the Kafka ``alerts`` topic.

Two sources, one service (:class:`delivery.service.DeliveryService`):

- **a file** (``logystera deliver alerts.jsonl``, ``-`` = stdin;
  :mod:`delivery.file_source`): the output of ``replay`` or ``demo``; the run
  ends once every record is done on every channel (delivered, gave up,
  collapsed, ...), or at SIGINT/SIGTERM.
- **Kafka** (``--bootstrap HOST:PORT [--topic alerts]``;
  :mod:`delivery.kafka_source`): runs until SIGINT/SIGTERM, committing a
  partition's offset only up to its first record that is not done; with
  inhibit rules, it first reads the records before the committed offsets
  again to restore the inhibitions (``--inhibit-history`` per partition).

With ``--metrics-port`` the counters are served for Prometheus
(:mod:`delivery.metrics`). Invalid records are reported on stderr, counted in
the summary and never delivered. A mistake in the options is a
:class:`schemas.errors.UsageError` (exit 2) raised before anything is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from delivery.attempt_log import AttemptLog
from delivery.file_source import deliver_file
from delivery.holds import HoldPolicy
from delivery.kafka_source import INHIBIT_HISTORY, deliver_kafka
from delivery.metrics import DeliveryMetrics
from delivery.schedule import DeliveryPolicy
from delivery.service import DeliveryService, unless_stopped
from delivery.silences import SilenceCache
from schemas.errors import UsageError
from sinks.channel import ChannelSender
from sinks.clickhouse import Store

if TYPE_CHECKING:
    from schemas.rule_loader import RuleSet


@dataclass
class DeliverOptions:
    """What ``logystera deliver`` was asked to do, with its channels opened and its store connected."""

    senders: list[ChannelSender]
    store: Store
    source: str | None = None  # a file, "-" for stdin; None with Kafka
    bootstrap: str | None = None
    topic: str = "alerts"
    group: str = "logystera-deliver"
    policy: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    grace: float = 10.0
    metrics: tuple[str, int] | None = None  # (host, port) of the Prometheus endpoint
    holds: HoldPolicy = field(default_factory=HoldPolicy)
    silence_refresh: float = 5.0  # seconds between two reads of the silences
    kafka_options: Mapping[str, str] = field(default_factory=dict)  # --kafka-option, checked
    inhibit_history: int = INHIBIT_HISTORY  # records per partition read again at start to restore inhibitions (Kafka)


def hold_policy(ruleset: RuleSet) -> HoldPolicy:
    """The mute times and inhibit rules of a rule set, and which channels and rules name which mute times."""
    return HoldPolicy(
        ruleset.mute_times, {channel.name: channel.mute for channel in ruleset.channels},
        {rule.id: rule.mute for rule in ruleset.rules}, ruleset.inhibit,
    )


def open_deliver(args: argparse.Namespace, ruleset: RuleSet, environ: Mapping[str, str],
                 kafka_options: Mapping[str, str] | None = None) -> DeliverOptions:
    """The options of ``logystera deliver`` (durations in milliseconds), every channel opened (its secrets read now), the store open.

    Fails before anything is sent: a missing secret or a bad option with a
    :class:`schemas.errors.UsageError` (exit 2), a chDB directory another
    process holds at once with :class:`sinks.clickhouse.StoreUnavailable` (exit 1).
    """
    from delivery.channels import open_sender
    from sinks.clickhouse import RetryPolicy, StoreConfigError

    try:
        policy = DeliveryPolicy(args.max_attempts, args.backoff / 1000, args.backoff_cap / 1000, args.concurrency)
    except ValueError as error:
        raise UsageError(str(error)) from None
    timeout = args.timeout / 1000
    if timeout <= 0:
        raise UsageError("--timeout must be more than 0")
    if args.silence_refresh < 100:
        raise UsageError("--silence-refresh must be at least 100ms")
    if args.inhibit_history < 0:
        raise UsageError("--inhibit-history must be at least 0")
    senders = [open_sender(channel, environ, timeout=timeout) for channel in ruleset.channels]  # ChannelConfigError: exit 2
    try:
        # chDB: the directory must be ours alone, and a taken one is reported at once instead of retried for a minute.
        store = Store.open(args.store, retry=RetryPolicy(give_up_after=0)) if args.store.startswith("chdb://") \
            else Store.open(args.store)
    except StoreConfigError as error:
        raise UsageError(f"--store: {error}") from None
    store.retry = RetryPolicy(give_up_after=store.address.give_up_after)
    return DeliverOptions(
        senders, store, source=args.alerts, bootstrap=args.bootstrap, topic=args.topic, group=args.group,
        policy=policy, grace=timeout,
        metrics=None if args.metrics_port is None else (args.metrics_host, args.metrics_port),
        holds=hold_policy(ruleset), silence_refresh=args.silence_refresh / 1000,
        kafka_options=dict(kafka_options or {}), inhibit_history=args.inhibit_history,
    )


def run_deliver(options: DeliverOptions, err: TextIO = sys.stderr) -> int:
    """Run to the end of the file, or until SIGINT/SIGTERM; print the summary.

    0 when the run completed (the whole input delivered, or a live run
    stopped by a signal); 1 when a file run was stopped before the end of its
    input and of every record's delivery.
    """
    return asyncio.run(_run(options, err))


async def _run(options: DeliverOptions, err: TextIO) -> int:
    silences = SilenceCache(options.store, options.holds, interval=options.silence_refresh, err=err)
    service = DeliveryService(options.senders, AttemptLog(options.store), options.policy, holds=options.holds,
                              silences=silences)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = DeliveryMetrics(service, loop).serve(*options.metrics)[0] if options.metrics else None
    try:
        await silences.refresh()  # nothing is sent before the silences are known
        service.start()
        if options.bootstrap is None:
            finished = await unless_stopped(service.guarded(deliver_file(service, options.source or "-", err)), stop)
        else:  # watches ``stop`` itself
            await service.guarded(deliver_kafka(service, options.bootstrap, options.topic, options.group, options.grace,
                                                stop, err, options.kafka_options, options.inhibit_history))
            finished = True
    finally:
        await service.stop(options.grace)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if server is not None:
            server.shutdown()
            server.server_close()
    for line in service.summary():
        print(line, file=err)
    return 0 if finished else 1
