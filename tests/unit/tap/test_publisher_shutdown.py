"""Stopping the tap while the broker is away: what is still queued is counted as dropped, never silently lost.

Real parts: the tap's own Kafka producer (kafka-python) pointed at a port nobody listens on, so the publisher
thread is still waiting for a broker when the tap stops.
"""

from __future__ import annotations

import socket

from monitor.settings import Settings
from monitor.tap.exchange import Exchange
from monitor.tap.metrics import TapMetrics
from monitor.tap.publisher import EventPublisher


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_events_queued_at_shutdown_are_counted() -> None:
    settings = Settings.load(env={"FRAMEWATCH_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_closed_port()}"})
    metrics = TapMetrics()
    publisher = EventPublisher(settings, metrics).start()
    for _ in range(5):
        publisher.offer(Exchange(path="/v1/chat/completions", status=200, request_body=b"{}", response_body=b"{}"))
    publisher.stop(timeout=0.5)
    dropped = {r: metrics.events_dropped.labels(r)._value.get() for r in ("shutdown", "publish_failed", "queue_full")}
    # every exchange is accounted for: dropped at shutdown, or given up by a producer that never connected
    assert dropped["shutdown"] + dropped["publish_failed"] == 5, dropped
    assert dropped["shutdown"] >= 1, dropped
