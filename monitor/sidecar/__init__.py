"""The sidecar's hot path: Kafka in, decode, detect, score, record, commit; its HTTP surface."""
