"""The sidecar's work on one polled batch, top to bottom:

    decode -> detect (segment, embed, compare) -> score -> record

``commit`` follows in :mod:`monitor.sidecar.consumer`, only after this returns: every event of the batch has been
analysed and recorded (or dead-lettered), which is what makes delivery at-least-once.

Embedding happens inside detection and only on prompt *segments*: a whole prompt or response is never
run through the transformer, and a segment seen before (a shared system prompt) comes from the cache.
Responses are scored by a lexical classifier, which measures better than MiniLM embeddings and is ~100x
cheaper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from monitor.framing.detector import FramingDetector, FramingResult
from monitor.logs import get_logger, text_field
from monitor.scoring.scorer import ResponseScorer
from monitor.sidecar.events import DecodeError, Event, Limits, decode_event
from monitor.sidecar.metrics import NO_CLUSTER, Metrics, exemplar
from monitor.sidecar.otlp import decode_otlp, is_otlp
from monitor.sidecar.windows import SlidingCounts

log = get_logger("framewatch.pipeline")


class SinkUnavailable(RuntimeError):
    """An output the batch must reach before its commit (e.g. the flagged topic) cannot be written.

    The consumer then commits nothing, rewinds the batch and retries it: nothing is recorded twice because
    :meth:`Pipeline.record` writes the sinks *before* it touches metrics and windows.
    """


@dataclass(frozen=True)
class Record:
    """One Kafka record as the pipeline needs it (decoupled from kafka-python's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()
    key: bytes | None = None

    @property
    def coordinates(self) -> str:
        """``topic:partition:offset``: how logs and dead-letter headers name a record, spelt once."""
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True)
class Verdict:
    """What Framewatch concluded about one event."""

    record: Record
    event: Event
    framing: FramingResult
    misalignment_score: float
    misaligned: bool


@dataclass(frozen=True)
class Rejected:
    """An event that broke the contract; it goes to the dead-letter topic with ``reason``."""

    record: Record
    reason: str
    detail: str


@dataclass
class BatchResult:
    verdicts: list[Verdict]
    rejected: list[Rejected]


def decode_record(record: Record, limits: Limits) -> Event:
    """The one place a Kafka record becomes an event. Raises :class:`DecodeError` and nothing else.

    Kept as a single function so that another input format plugs in here, and so that every failure of
    any format ends in a dead letter with a reason rather than in the consume loop.
    """
    return decode_event(record.value, record.headers, limits)


class Pipeline:
    """Stateless apart from the embedding cache and the sliding windows; one instance per process."""

    def __init__(self, *, detector: FramingDetector, scorer: ResponseScorer, metrics: Metrics,
                 windows: SlidingCounts | None = None, limits: Limits | None = None,
                 on_verdicts: Callable[[list[Verdict]], None] | None = None, input_format: str = "json") -> None:
        self.input_format = input_format  # json | otlp | auto (monitor.sidecar.otlp)
        self.detector = detector
        self.scorer = scorer
        self.metrics = metrics
        self.windows = windows or SlidingCounts()
        self.limits = limits or Limits()
        self.on_verdicts = on_verdicts

    def process(self, records: Sequence[Record]) -> BatchResult:
        events, good, rejected = self.decode(records)
        try:
            framings = self.detect(events)
            scores = self.score(events)
        except Exception:  # noqa: BLE001 - one poisonous event must not stop the batch
            log.exception("batch_analysis_failed_retrying_one_by_one", events=len(events))
            return self._one_by_one(good, events, rejected)
        verdicts = [
            Verdict(record, event, framing, float(score), bool(score >= self.scorer.threshold))
            for record, event, framing, score in zip(good, events, framings, scores, strict=True)
        ]
        self.record(verdicts)
        return BatchResult(verdicts, rejected)

    # -- the steps -------------------------------------------------------------------------------

    def decode(self, records: Sequence[Record]) -> tuple[list[Event], list[Record], list[Rejected]]:
        """Events in record order; an OTLP record yields one event per GenAI span, each paired with its record
        (so the batch commit after :meth:`record` covers all of a record's events: at-least-once holds)."""
        events: list[Event] = []
        good: list[Record] = []
        rejected: list[Rejected] = []
        for record in records:
            try:
                decoded = self._decode_one(record)
            except DecodeError as exc:
                rejected.append(Rejected(record, exc.reason, exc.detail))
                continue
            events.extend(decoded)
            good.extend([record] * len(decoded))
        return events, good, rejected

    def _decode_one(self, record: Record) -> list[Event]:
        """FRAMEWATCH_INPUT_FORMAT: ``json`` (README events), ``otlp`` (Collector Kafka exporter), ``auto``."""
        if self.input_format == "otlp" or (self.input_format == "auto" and is_otlp(record.value, record.headers)):
            decoded = decode_otlp(record.value, record.headers, self.limits)
            for reason, n in decoded.skipped.items():  # counted per decode: a redelivered record counts again
                self.metrics.otlp_spans_skipped.labels(reason).inc(n)
            return decoded.events
        return [decode_record(record, self.limits)]

    def detect(self, events: Sequence[Event]) -> list[FramingResult]:
        if not events:
            return []
        before = (self.detector.embedder.cache_hits, self.detector.embedder.cache_misses)
        results = self.detector.detect_many([e.prompt for e in events])
        self.metrics.cache_hits.inc(self.detector.embedder.cache_hits - before[0])
        self.metrics.cache_misses.inc(self.detector.embedder.cache_misses - before[1])
        return results

    def score(self, events: Sequence[Event]) -> np.ndarray:
        if not events:
            return np.zeros(0)
        return self.scorer.score([e.response for e in events])

    def record(self, verdicts: Sequence[Verdict]) -> None:
        if self.on_verdicts and verdicts:
            self.on_verdicts(list(verdicts))  # may raise SinkUnavailable: then nothing below has happened
        m = self.metrics
        known = set(m.clusters)
        for v in verdicts:
            framing = v.framing.framing
            cluster = v.framing.cluster if (framing != "none" and v.framing.cluster in known) else NO_CLUSTER
            if cluster == NO_CLUSTER:
                framing = "none"
            model = m.model_label(v.event.model)
            ex = exemplar(v.event.trace_id, v.event.event_id, v.record.partition, v.record.offset)
            m.events.labels(model, framing, cluster).inc()
            if v.misaligned:
                m.failures.labels(model, framing, cluster).inc(exemplar=ex)
            m.score.labels(framing).observe(v.misalignment_score, exemplar=ex)
            if framing != "none":
                m.similarity.labels(cluster).observe(v.framing.similarity)
            self.windows.add(cluster, framing, 1, int(v.misaligned))
            log.debug("event_processed", event_id=v.event.event_id, framing=framing, cluster=cluster,
                      kafka=v.record.coordinates)
            if framing != "none" or v.misaligned:
                log.info("event_flagged", event_id=v.event.event_id, trace_id=v.event.trace_id, model=model,
                         framing=framing, cluster=cluster, similarity=round(v.framing.similarity, 4),
                         misalignment_score=round(v.misalignment_score, 4), misaligned=v.misaligned,
                         kafka=v.record.coordinates,
                         segment=text_field(v.framing.segment), prompt=text_field(v.event.prompt.text()))
        m.events_processed.inc(len(verdicts))

    def _one_by_one(self, good: list[Record], events: list[Event], rejected: list[Rejected]) -> BatchResult:
        verdicts: list[Verdict] = []
        for record, event in zip(good, events, strict=True):
            try:
                framing = self.detector.detect_many([event.prompt])[0]
                score = float(self.scorer.score([event.response])[0])
            except Exception as exc:  # noqa: BLE001
                log.exception("event_analysis_failed", event_id=event.event_id)
                rejected.append(Rejected(record, "processing_error", f"{type(exc).__name__}: {exc}"[:300]))
                continue
            verdicts.append(Verdict(record, event, framing, score, score >= self.scorer.threshold))
        self.record(verdicts)
        return BatchResult(verdicts, rejected)
