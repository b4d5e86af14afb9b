"""The registry of channel types: a configured channel (channels.yaml) opened as its sender.

It lives here, in the delivery process, one level above the channels: each
channel module of ``sinks/`` imports ``sinks.channel`` for the shared pieces,
so the module that knows every channel type must sit above them, not in
``sinks.channel`` (Alertmanager registers its integrations the same way, in
the receiver configuration rather than in ``notify``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from schemas.rules import Channel
from sinks.channel import ChannelSender
from sinks.email import EmailSender
from sinks.slack import SlackSender
from sinks.teams import TeamsSender
from sinks.webhook import WebhookSender


def open_sender(config: Channel, environ: Mapping[str, str], *, timeout: float = 10.0,
                clock: Callable[[], float] = time.time) -> ChannelSender:
    """The sender of one configured channel, its URL and secrets read from ``environ`` now.

    Reading the environment at open time makes a missing variable fail when
    the delivery service starts, not at the first alert. Raises
    :class:`sinks.channel.ChannelConfigError` (one line naming channel and
    variable). ``timeout`` bounds one attempt, end to end; ``clock`` gives the
    attempt time (webhook timestamps, e-mail dates, HTTP-date ``Retry-After``).
    """
    if config.type == "webhook":
        return WebhookSender(config, environ, timeout=timeout, clock=clock)
    if config.type == "slack":
        return SlackSender(config, environ, timeout=timeout, clock=clock)
    if config.type == "teams":
        return TeamsSender(config, environ, timeout=timeout, clock=clock)
    return EmailSender(config, environ, timeout=timeout, clock=clock)
