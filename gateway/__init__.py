"""The ingest gateway: signed batches in, validated signals (and ticks) to Kafka."""
