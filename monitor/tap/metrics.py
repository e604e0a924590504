"""The tap's own Prometheus metrics, served on its metrics port (``tap_metrics_port``, default 9465).

Every label value comes from a bounded set: ``route`` from the captured paths plus ``other``, ``code`` a
status class, ``reason`` from :data:`DROP_REASONS`. Zero series are pre-created so rates exist from the
first scrape.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from monitor import __version__

ROUTES = ("chat_completions", "completions", "other")
CODES = ("1xx", "2xx", "3xx", "4xx", "5xx", "error")  # error: the tap answered itself (upstream unreachable/timeout)
#: Why an exchange that should have become an event did not reach the topic.
DROP_REASONS = (
    "queue_full",  # the bounded queue was full (broker slow or away for long)
    "publish_failed",  # the producer gave up: not acknowledged within tap_publish_timeout_ms, or refused
    "not_captured",  # body over tap_max_body_bytes, not JSON, or not a completion the contract can carry
    "oversized",  # the event would exceed max_event_bytes (the sidecar would dead-letter it)
    "shutdown",  # still queued when the tap stopped and the broker could not take it in time
    "incomplete",  # client disconnected, upstream broke off or timed out mid-response: no event (docs/tap.md)
    "error",  # building the event raised: a bug to report; the request itself was unaffected
)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "error"


class TapMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        Info("framewatch_tap_build", "Framewatch tap version", registry=r).info({"version": __version__})
        self.requests = Counter("framewatch_tap_requests", "Requests forwarded, by route and status class",
                                ["route", "code"], registry=r)
        self.upstream_seconds = Histogram(
            "framewatch_tap_upstream_latency_seconds",
            "Request arrival to the upstream's response headers (time to first byte for streams)",
            ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.exchange_seconds = Histogram("framewatch_tap_exchange_seconds",
                                          "Request arrival to the last response byte sent to the client",
                                          ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.events_queued = Counter("framewatch_tap_events_queued", "Finished exchanges handed to the publisher",
                                     registry=r)
        self.events_published = Counter("framewatch_tap_events_published",
                                        "Events acknowledged by the broker", registry=r)
        self.events_dropped = Counter("framewatch_tap_events_dropped",
                                      "Completion exchanges that did not become a published event", ["reason"],
                                      registry=r)
        self.publish_lag = Histogram("framewatch_tap_publish_lag_seconds",
                                     "Last response byte to the broker's acknowledgement of the event",
                                     buckets=LAG_BUCKETS, registry=r)
        self.queue_depth = Gauge("framewatch_tap_queue_depth", "Exchanges waiting for the producer", registry=r)
        self.broker_up = Gauge("framewatch_tap_broker_connected", "1 while the producer has a broker connection",
                               registry=r)
        for route in ROUTES:
            self.upstream_seconds.labels(route)
            self.exchange_seconds.labels(route)
            for code in ("2xx", "4xx", "5xx", "error"):
                self.requests.labels(route, code)
        for reason in DROP_REASONS:
            self.events_dropped.labels(reason)
