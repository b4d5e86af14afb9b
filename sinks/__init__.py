"""Destinations: the ClickHouse store, Kafka, a callback sink, and one module per delivery channel behind ``sinks.channel``."""
