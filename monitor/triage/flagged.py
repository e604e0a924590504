"""Flagged events: every event that fails or carries a framing, published to a Kafka topic.

Why a topic: when an alert pages someone, the evidence must outlive any one replica's memory, and all
replicas must write to the same place. The flagged topic (``FRAMEWATCH_FLAGGED_TOPIC``) is that durable,
shared record; ``/v1/incidents`` serves a replica's recent view of it (see monitor.triage.incidents).

Delivery: :meth:`FlaggedPublisher.publish` runs inside ``Pipeline.process`` (the ``on_verdicts`` hook), so
it finishes before the consumer commits the batch. It flushes and waits for every acknowledgement; while
the topic cannot be written it retries with backoff and, after ``give_up_s``, raises
:class:`~monitor.sidecar.pipeline.SinkUnavailable`: the consumer then reports not-ready, commits nothing, rewinds
the batch and tries it again later (nothing was recorded yet): at-least-once, never lost, never stuck.

Text is redacted before it leaves the process (``FRAMEWATCH_REDACTION``: ``none``, ``truncate:N`` or
``hash``): the flagged topic is read by more people than the inference logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from monitor.logs import get_logger
from monitor.sidecar.pipeline import SinkUnavailable, Verdict
from monitor.triage.evaluation import evaluation_result

log = get_logger("framewatch.flagged")

DEFAULT_REDACTION = "truncate:80"
BACKOFF_MAX_S = 30.0
FLUSH_SLICE_S = 1.0  # longest single wait on the producer; the stop event is checked between slices


class RedactionError(ValueError):
    """The redaction setting cannot be parsed."""


class Redactor:
    """Applies one redaction policy to every text that leaves the process (topic, API, UI)."""

    def __init__(self, policy: str = DEFAULT_REDACTION) -> None:
        self.policy = policy.strip().lower()
        self.limit: int | None = None
        if self.policy.startswith("truncate:"):
            try:
                self.limit = int(self.policy.split(":", 1)[1])
            except ValueError:
                raise RedactionError(f"redaction {policy!r}: truncate:N needs an integer N") from None
            if self.limit < 0:
                raise RedactionError(f"redaction {policy!r}: N must be >= 0")
        elif self.policy not in {"none", "hash"}:
            raise RedactionError(f"redaction {policy!r} must be 'none', 'truncate:N' or 'hash'")

    def __call__(self, text: str | None) -> str | None:
        if text is None:
            return None
        if self.policy == "none":
            return text
        if self.policy == "hash":
            return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        assert self.limit is not None
        return text if len(text) <= self.limit else text[: self.limit] + "…"


def is_flagged(verdict: Verdict) -> bool:
    """Fails, or carries a framing: the events on-call needs to see."""
    return verdict.misaligned or verdict.framing.framing != "none"


def flagged_record(verdict: Verdict, redact: Redactor, candidate: str | None = None,
                   now: float | None = None) -> dict[str, Any]:
    """The JSON document written to the flagged topic (and served by /v1/incidents)."""
    v, r = verdict, verdict.record
    return {
        "event_id": v.event.event_id,
        "trace_id": v.event.trace_id,
        "model": v.event.model,
        "kafka": {"topic": r.topic, "partition": r.partition, "offset": r.offset},
        "framing": v.framing.framing,
        "cluster": v.framing.cluster,
        "similarity": round(float(v.framing.similarity), 4),
        "segment": redact(v.framing.segment),
        "misalignment_score": round(float(v.misalignment_score), 4),
        "misaligned": bool(v.misaligned),
        "candidate": candidate,
        "prompt": redact("\n\n".join(v.event.prompt.user)),  # the caller's turns; the system prompt apart
        "system_prompt": redact(v.event.prompt.system),
        "response": redact(v.event.response),
        "flagged_at": datetime.fromtimestamp(now if now is not None else time.time(), UTC).isoformat(),
        "evaluation": evaluation_result(v),  # the OTel gen_ai.evaluation.result shape (monitor.triage.evaluation)
    }


class FlaggedPublisher:
    """Writes flagged records to Kafka and waits for the broker's acknowledgement.

    The producer is created on first use, so a sidecar starts (and answers /healthz) while the broker is
    still unreachable. ``producer_factory`` is injectable for tests.
    """

    def __init__(self, topic: str, producer_factory: Callable[[], Any], *, give_up_s: float = 10.0,
                 stop: threading.Event | None = None) -> None:
        self.topic = topic
        self._factory = producer_factory
        self._producer: Any = None
        self.give_up_s = give_up_s
        self.stop = stop or threading.Event()
        self.published = 0

    def publish(self, records: Sequence[dict[str, Any]]) -> None:
        """Send all records and wait for every ack; retry with backoff; raise after ``give_up_s``."""
        if not records:
            return
        deadline = time.monotonic() + self.give_up_s
        delay = 0.5
        while True:
            try:
                if self.stop.is_set():
                    raise FlaggedPublishError("stop requested before the flagged records were acknowledged")
                self._send_all(records, deadline)
                self.published += len(records)
                return
            except Exception as exc:  # noqa: BLE001 - any producer failure: retry, then give up loudly
                error = f"{type(exc).__name__}: {exc}"
                if time.monotonic() + delay > deadline or self.stop.is_set():
                    log.error("flagged_publish_failed_not_committing", topic=self.topic, error=error,
                              count=len(records))
                    raise FlaggedPublishError(error) from exc
                log.warning("flagged_publish_retrying", topic=self.topic, error=error, retry_in_s=delay)
                self._reset()
                self.stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)

    def _send_all(self, records: Sequence[dict[str, Any]], deadline: float) -> None:
        """Send, then wait for the acks in slices of ``FLUSH_SLICE_S`` that honour the stop event.

        One long ``flush()`` is what kept a SIGTERM (and readiness) waiting for half a minute during an
        outage; the slices bound every blocking call while the overall budget stays ``give_up_s``.
        """
        if self._producer is None:
            self._producer = self._factory()
        futures = [
            self._producer.send(self.topic, key=_utf8(rec["event_id"]),
                                value=_utf8(json.dumps(rec, ensure_ascii=False)),
                                headers=[("framewatch.source",
                                          _utf8(f"{rec['kafka']['topic']}:{rec['kafka']['partition']}:"
                                                f"{rec['kafka']['offset']}"))])
            for rec in records
        ]
        while True:
            if self.stop.is_set():
                raise FlaggedPublishError("stop requested before the flagged records were acknowledged")
            remaining = deadline - time.monotonic()
            try:
                self._producer.flush(timeout=max(min(FLUSH_SLICE_S, remaining), 0.05))
                break
            except Exception:  # noqa: BLE001 - a slice ran out: go round, unless the budget is spent
                if remaining <= FLUSH_SLICE_S:
                    raise
        for fut in futures:
            fut.get(timeout=FLUSH_SLICE_S)

    def _reset(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=2)
            self._producer = None

    def close(self) -> None:
        self._reset()


def _utf8(text: str) -> bytes:
    """Text as UTF-8 whatever it holds (a lone surrogate becomes '?'), so one record cannot fail the send."""
    return text.encode("utf-8", "replace")


class FlaggedPublishError(SinkUnavailable):
    """The flagged topic could not be written: the batch must not be committed."""
