"""Serving a Prometheus registry on ``http://HOST:PORT/metrics`` (``--metrics-port``), as ``deliver`` and ``detect`` do."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from schemas.errors import UsageError


def serve_registry(registry: CollectorRegistry, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` from a daemon thread; a port that cannot be bound is a usage error (one line, exit 2)."""
    try:
        return start_http_server(port, host, registry)
    except OSError as error:
        raise UsageError(f"--metrics-port {port}: {error.strerror}") from None
