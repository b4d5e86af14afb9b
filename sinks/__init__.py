"""Destinations: the ClickHouse store, Kafka, and one module per delivery channel behind ``sinks.channel``."""
