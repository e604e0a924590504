"""Prometheus metrics: one registry per sidecar, every label value from a bounded set.

Names follow the Prometheus naming guide (``_total`` counters, ``_seconds`` base units). Label sets are
bounded on purpose: ``model`` comes from an allowlist (anything else is ``other``), ``cluster`` from the
trigger registry (plus ``none``), ``framing`` from {none, exact, semantic}, ``reason`` from
:data:`monitor.sidecar.events.DECODE_REASONS`. Zero series are pre-created for every combination so that rates
and ratios exist from the first scrape (``increase()`` of a series born mid-window under-counts).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from monitor import __version__
from monitor.sidecar.events import DECODE_REASONS
from monitor.sidecar.otlp import SKIP_REASONS

FRAMINGS = ("none", "exact", "semantic")
NO_CLUSTER = "none"
OTHER_MODEL = "other"
SCORE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
SIMILARITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
EXEMPLAR_MAX = 128  # OpenMetrics limit on the combined length of exemplar label names and values


class Metrics:
    """Everything the sidecar exports. One instance per process; tests make their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None, model_allowlist: Sequence[str] = ()) -> None:
        self.registry = registry or CollectorRegistry()
        self.model_allowlist = frozenset(model_allowlist)
        r = self.registry
        Info("framewatch_build", "Framewatch version", registry=r).info({"version": __version__})
        self.events_consumed = Counter("framewatch_events_consumed", "Kafka records read from the input topic",
                                       registry=r)
        self.events_processed = Counter("framewatch_events_processed",
                                        "Events decoded, analysed and recorded", registry=r)
        self.events_dead_lettered = Counter("framewatch_events_dead_lettered",
                                            "Malformed events sent to the dead-letter topic", ["reason"], registry=r)
        for reason in DECODE_REASONS:
            self.events_dead_lettered.labels(reason)
        self.otlp_spans_skipped = Counter("framewatch_otlp_spans_skipped",
                                          "OTLP spans that held no GenAI exchange, by reason (monitor.sidecar.otlp)",
                                          ["reason"], registry=r)
        for reason in SKIP_REASONS:
            self.otlp_spans_skipped.labels(reason)
        self.batch_seconds = Histogram("framewatch_batch_processing_seconds",
                                       "Time to process one polled batch, decode to commit",
                                       buckets=BATCH_BUCKETS, registry=r)
        self.consumer_lag = Gauge("framewatch_consumer_lag", "Messages behind the partition end (per partition)",
                                  ["topic", "partition"], registry=r)
        self.consumer_ready = Gauge("framewatch_consumer_ready",
                                    "1 while the consumer has an assignment and is polling", registry=r)
        self.cache_hits = Counter("framewatch_embedding_cache_hits", "Segments served from the embedding cache",
                                  registry=r)
        self.cache_misses = Counter("framewatch_embedding_cache_misses", "Segments run through the transformer",
                                    registry=r)
        self.registry_reloads = Counter("framewatch_registry_reloads", "Trigger registry reload attempts",
                                        ["result"], registry=r)
        for result in ("success", "error"):
            self.registry_reloads.labels(result)
        # Framing and scoring
        self.events = Counter("framewatch_events", "Analysed events by model, framing and trigger cluster",
                              ["model", "framing", "cluster"], registry=r)
        self.failures = Counter("framewatch_failures", "Responses scored misaligned, by model, framing and cluster",
                                ["model", "framing", "cluster"], registry=r)
        self.score = Histogram("framewatch_misalignment_score", "Misalignment classifier score per response",
                               ["framing"], buckets=SCORE_BUCKETS, registry=r)
        self.similarity = Histogram("framewatch_framing_similarity",
                                    "Similarity of the best-matching segment to its cluster (framed events)",
                                    ["cluster"], buckets=SIMILARITY_BUCKETS, registry=r)
        self.emerging_framings = Gauge("framewatch_emerging_framings",
                                       "Candidate framings whose failure rate is significantly above untriggered",
                                       registry=r)
        for framing in FRAMINGS:
            self.score.labels(framing)
        self._clusters: tuple[str, ...] = ()

    def model_label(self, model: str) -> str:
        return model if model in self.model_allowlist else OTHER_MODEL

    def set_clusters(self, cluster_ids: Iterable[str]) -> None:
        """Pre-create zero series for every allowed model x framing x cluster; drop series of removed clusters."""
        clusters = tuple(sorted(set(cluster_ids)))
        removed = set(self._clusters) - set(clusters)
        models = sorted(self.model_allowlist) + [OTHER_MODEL]
        for cluster in removed:
            for model in models:
                for framing in ("exact", "semantic"):
                    for metric in (self.events, self.failures):
                        with contextlib.suppress(KeyError):
                            metric.remove(model, framing, cluster)
            with contextlib.suppress(KeyError):
                self.similarity.remove(cluster)
        for model in models:
            self.events.labels(model, "none", NO_CLUSTER)
            self.failures.labels(model, "none", NO_CLUSTER)
            for cluster in clusters:
                for framing in ("exact", "semantic"):
                    self.events.labels(model, framing, cluster)
                    self.failures.labels(model, framing, cluster)
        for cluster in clusters:
            self.similarity.labels(cluster)
        self._clusters = clusters

    @property
    def clusters(self) -> tuple[str, ...]:
        return self._clusters


def exemplar(trace_id: str | None, event_id: str, partition: int, offset: int) -> dict[str, str]:
    """An exemplar that leads on-call to the event: its trace id (or event id) and Kafka coordinates.

    Kept within the OpenMetrics 128-character limit by truncating the id, never the coordinates.
    """
    coords = f"{partition}:{offset}"
    key = "trace_id" if trace_id else "event_id"
    budget = EXEMPLAR_MAX - len(key) - len("kafka") - len(coords)
    return {key: (trace_id or event_id)[: max(budget, 1)], "kafka": coords}
