"""The delivery process, a peer of ``gateway/``: notifications in, channel attempts out, every attempt recorded.

``command.py`` is ``logystera deliver`` (options, one run); it reads records
with ``file_source.py`` or ``kafka_source.py`` (offsets committed once done)
and serves ``metrics.py`` (Prometheus);
``service.py`` runs one schedule per channel (``schedule.py``: retries, rate
limits, collapsing) and records attempts (``attempt_log.py``); ``channels.py``
opens a configured channel with the modules of ``sinks/``. docs/delivery.md is
the user-facing description.
"""
