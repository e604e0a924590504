"""The per-replica evidence stream: what every replica saw in each batch, compact enough to share.

Why: a replica only sees the partitions it owns, so its own counts hold a fraction of an emerging
framing's evidence (with three replicas, a third: it needs about three times the traffic to become
significant) and its window counts are a fraction of the truth. Each replica therefore writes, per polled
batch and source partition, one JSON record to ``FRAMEWATCH_EVIDENCE_TOPIC``; every replica reads the whole
topic and merges it (monitor.triage.view), so each holds the same picture.

A record (``key`` = ``<topic>:<partition>`` of the source, so all evidence of one source partition stays in
order on one evidence partition)::

    {"v": 1, "replica": "framewatch-7f9c-2", "ts": 1764660000.12, "topic": "llm.inferences", "partition": 3,
     "events": [{"o": 1841, "c": "none", "f": "none", "x": 0, "h": ["9c1e…", "04ab…"]},
                {"o": 1842, "c": "none", "f": "none", "x": 1, "h": [...], "s": ["Answer as a pirate would."],
                 "v": ["<base64 float16 embedding>"], "id": "ev-1", "t": "trace", "p": "<redacted prompt>",
                 "sc": 0.93},
                {"o": 1843, "c": "tag_wrapper", "f": "exact", "x": 0}]}

* ``o`` the source offset (readers drop offsets they have merged already: a batch redelivered after a crash
  or a rewind is counted once); ``c``/``f``/``x`` cluster, framing and failing, as the metrics count them.
* ``h`` (unmatched events only) the :func:`~monitor.triage.observations.segment_key` of each candidate sentence:
  enough to count the event towards a candidate.
* failing unmatched events (~1% of traffic) also carry the sentences themselves (``s``, unredacted: a
  promotion writes them to the registry; at most 300 characters each), their embeddings (``v``: the
  replica already runs the transformer, readers do not) and a redacted example (``id``, ``t``, ``p``,
  ``sc``).

So the topic holds prompt sentences of failing events: give it the ACLs of the input topic. A record is
kept under ``max_bytes`` (a batch is split over several records) so no producer or broker limit refuses it.
Delivery is that of the flagged topic: the record is acknowledged before the batch is committed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from monitor.logs import get_logger
from monitor.sidecar.pipeline import SinkUnavailable, Verdict
from monitor.triage.observations import Observation, segment_key, sentences

log = get_logger("framewatch.evidence")

VERSION = 1
BACKOFF_MAX_S = 5.0
SLICE_S = 1.0  # longest single wait for an acknowledgement: the stop event is checked between slices
FRAMINGS = ("none", "exact", "semantic")


class Embed(Protocol):
    def __call__(self, texts: Sequence[str], /) -> np.ndarray: ...


def encode_vector(vec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vec, dtype="<f2").tobytes()).decode("ascii")


def decode_vector(text: str, dim: int) -> np.ndarray:
    """A unit vector from ``encode_vector``; raises ValueError on the wrong size or non-finite values."""
    vec = np.frombuffer(base64.b64decode(text, validate=True), dtype="<f2").astype(np.float32)
    if vec.shape != (dim,) or not np.all(np.isfinite(vec)):
        raise ValueError(f"embedding of {vec.shape[0]} values, expected {dim}")
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 else vec


def build(verdicts: Sequence[Verdict], *, known_clusters: set[str], embed: Embed | None,
          redact: Callable[[str | None], str | None], replica: str, now: float,
          max_bytes: int = 900_000) -> list[tuple[bytes, dict[str, Any]]]:
    """The evidence records (key, document) of one batch: one or more per source partition."""
    failing_segments: dict[str, None] = {}
    entries: list[tuple[tuple[str, int], dict[str, Any], list[str]]] = []
    for v in verdicts:
        framing, cluster = v.framing.framing, v.framing.cluster
        if framing == "none" or cluster not in known_clusters:
            framing, cluster = "none", "none"
        entry: dict[str, Any] = {"o": v.record.offset, "c": cluster, "f": framing, "x": int(bool(v.misaligned))}
        segs: list[str] = []
        if v.framing.framing == "none":
            segs = sentences(v.event.prompt)
            entry["h"] = [segment_key(s) for s in segs]
            if v.misaligned:
                entry.update({"s": segs, "id": v.event.event_id, "t": v.event.trace_id,
                              "p": redact("\n\n".join(v.event.prompt.user)),
                              "sc": round(float(v.misalignment_score), 4)})
                failing_segments.update(dict.fromkeys(segs))
        entries.append(((v.record.topic, v.record.partition), entry, segs if v.misaligned else []))
    vectors: dict[str, str] = {}
    if failing_segments and embed is not None:
        texts = list(failing_segments)
        vectors = {t: encode_vector(row) for t, row in zip(texts, embed(texts), strict=True)}
    out: list[tuple[bytes, dict[str, Any]]] = []
    current: dict[tuple[str, int], tuple[dict[str, Any], int]] = {}
    for source, entry, segs in entries:
        if segs and vectors:
            entry["v"] = [vectors[s] for s in segs]
        size = len(json.dumps(entry, ensure_ascii=False).encode("utf-8", "replace")) + 1
        doc, used = current.get(source, (None, 0))
        if doc is None or (used + size > max_bytes and doc["events"]):
            doc = {"v": VERSION, "replica": replica, "ts": now, "topic": source[0], "partition": source[1],
                   "events": []}
            out.append((f"{source[0]}:{source[1]}".encode("utf-8", "replace"), doc))
            used = 200
        doc["events"].append(entry)
        current[source] = (doc, used + size)
    return out


@dataclass
class Evidence:
    """A validated evidence record, ready to merge."""

    replica: str
    ts: float
    topic: str
    partition: int
    events: list[dict[str, Any]]


def parse(value: bytes | None) -> Evidence:
    """Validate one evidence record; raises ValueError with the reason (the reader skips the record)."""
    if value is None:
        raise ValueError("empty record")
    doc = json.loads(value, parse_constant=_no_constant)
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise ValueError(f"not an evidence record of version {VERSION}")
    ts, topic, partition, events = doc.get("ts"), doc.get("topic"), doc.get("partition"), doc.get("events")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
        raise ValueError("'ts' must be a finite number")
    if not isinstance(topic, str) or not isinstance(partition, int) or isinstance(partition, bool):
        raise ValueError("'topic' must be a string and 'partition' an integer")
    if not isinstance(events, list):
        raise ValueError("'events' must be a list")
    return Evidence(str(doc.get("replica", "")), float(ts), topic, partition, events)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True)
class Entry:
    """One event of an evidence record, validated."""

    offset: int
    cluster: str
    framing: str
    failing: bool
    observation: Observation | None  # for unmatched events


def entry(raw: Any, topic: str, partition: int, dim: int) -> Entry:
    """Validate one event of a record; raises ValueError (the reader skips the event)."""
    if not isinstance(raw, dict):
        raise ValueError("event is not an object")
    offset, cluster, framing, failing = raw.get("o"), raw.get("c"), raw.get("f"), raw.get("x")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError("'o' must be a non-negative integer")
    if not isinstance(cluster, str) or framing not in FRAMINGS or failing not in (0, 1):
        raise ValueError("'c', 'f' or 'x' invalid")
    obs = None
    keys = raw.get("h")
    if keys is not None:
        if not isinstance(keys, list) or not all(isinstance(k, str) and len(k) <= 32 for k in keys):
            raise ValueError("'h' must be a list of sentence keys")
        segs, vecs = raw.get("s") or [], raw.get("v")
        if not isinstance(segs, list) or not all(isinstance(s, str) for s in segs) or len(segs) > len(keys):
            raise ValueError("'s' must be a list of sentences, one per key")
        vectors = None
        if failing and segs and isinstance(vecs, list) and len(vecs) == len(segs):
            vectors = np.stack([decode_vector(str(t), dim) for t in vecs]) if vecs else None
        prompt = raw.get("p")
        score = raw.get("sc", 0.0)
        obs = Observation(str(raw.get("id", "")), bool(failing), list(segs) if failing else [],
                          raw.get("t") if isinstance(raw.get("t"), str) else None,
                          {"topic": topic, "partition": partition, "offset": offset},
                          prompt if isinstance(prompt, str) else None,
                          float(score) if isinstance(score, (int, float)) and math.isfinite(score) else 0.0,
                          keys=list(keys[:len(segs)] if failing and segs else keys), vectors=vectors)
    return Entry(offset, cluster, str(framing), bool(failing), obs)


class EvidencePublisher:
    """Writes evidence records and waits for the acknowledgements (before the batch is committed).

    Retries with backoff while the topic is unwritable; after ``give_up_s`` (or once ``stop`` is set)
    raises :class:`EvidencePublishError`, a SinkUnavailable: the batch is then rewound and retried, and
    readers drop the offsets they merged already.
    """

    def __init__(self, topic: str, producer_factory: Callable[[], Any], *, give_up_s: float = 10.0,
                 stop: threading.Event | None = None, ack_timeout_s: float = 5.0,
                 on_retry: Callable[[], None] | None = None) -> None:
        self.topic = topic
        self.on_retry = on_retry  # e.g. re-create a missing topic (in the background: it must not block)
        self._factory = producer_factory
        self._producer: Any = None
        self.give_up_s = give_up_s
        self.ack_timeout_s = ack_timeout_s
        self.stop = stop or threading.Event()
        self.published = 0

    def publish(self, records: Sequence[tuple[bytes, dict[str, Any]]]) -> None:
        if not records:
            return
        deadline = time.monotonic() + self.give_up_s
        delay = 0.25
        while True:
            try:
                if self.stop.is_set():
                    raise EvidencePublishError("stop requested before the evidence was written")
                if self._producer is None:
                    self._producer = self._factory()
                futures = [self._producer.send(self.topic, key=key,
                                               value=json.dumps(doc, ensure_ascii=False).encode("utf-8", "replace"))
                           for key, doc in records]
                end = min(time.monotonic() + self.ack_timeout_s, deadline)
                for fut in futures:
                    self._wait(fut, end)
                self.published += len(records)
                return
            except EvidencePublishError:
                self.close()
                raise
            except Exception as exc:  # noqa: BLE001 - any producer failure: retry, then give up loudly
                error = f"{type(exc).__name__}: {exc}"
                if time.monotonic() + delay > deadline or self.stop.is_set():
                    log.error("evidence_publish_failed_not_committing", topic=self.topic, error=error,
                              records=len(records))
                    raise EvidencePublishError(error) from exc
                log.warning("evidence_publish_retrying", topic=self.topic, error=error, retry_in_s=delay)
                self.close()
                if self.on_retry is not None:
                    self.on_retry()
                self.stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)

    def _wait(self, fut: Any, end: float) -> None:
        """Wait for one acknowledgement in slices of ``SLICE_S``, so a stop request is seen within a second."""
        while True:
            if self.stop.is_set():
                raise EvidencePublishError("stop requested before the evidence was acknowledged")
            try:
                fut.get(timeout=SLICE_S)
                return
            except Exception:
                if fut.is_done or time.monotonic() >= end:
                    raise  # the broker refused it, or the budget is spent: retry from the top

    def close(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=2)
            self._producer = None


class EvidencePublishError(SinkUnavailable):
    """The evidence topic could not be written: the batch must not be committed."""
