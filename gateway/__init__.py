"""The ingest gateway: signed batches in, validated signals (and ticks) to Kafka.

``logystera gateway`` (``command.py``) serves :func:`app.create_app` on
uvicorn. The parts, each its own module: ``registry`` (sites and secrets),
``auth`` (Standard Webhooks headers and signature), ``batch`` (the envelope
and per-signal checks), ``ledger`` (taken batches and partial progress),
``kafka`` (the producer and delivery reports), ``ticker`` (the single-leader
ticker), ``limits`` (read deadlines, the connection cap and the budget of
unauthenticated bytes), ``metrics`` and ``errors`` (every refusal reason and
its status).
docs/gateway.md is the user-facing description.
"""
