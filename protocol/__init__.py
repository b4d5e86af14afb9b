"""What the site client (``dispatcher/``) and the server (``gateway/``, ``delivery/``) share, written once.

``wire`` is the batch protocol (body, Standard Webhooks signing, ``Retry-After``,
response classes; docs/protocol.md); ``resilience`` is full-jitter backoff and a
circuit breaker; ``lease`` is an exclusive file lease (one dispatcher sender per
buffer file, one ticker among a host's gateways); ``prometheus`` serves a metrics
registry (``deliver``, ``detect``). It imports nothing else of ours but
``schemas.errors``, so a change on one side cannot quietly break the other.
"""
