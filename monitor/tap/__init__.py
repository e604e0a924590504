"""``framewatch tap``: an OpenAI-compatible reverse proxy beside the inference server that publishes one
event per finished completion exchange to Kafka (docs/tap.md)."""
