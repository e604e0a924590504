"""The triage read side: incidents, window counts and emerging framings merged from the shared topics.

Every replica holds one :class:`TriageView`, fed by the flagged topic (incidents) and the evidence topic
(counts and candidates) that *all* replicas write: so ``/v1/incidents``, ``/v1/clusters``,
``/v1/candidates`` and ``/ui`` give the same answer whichever pod serves them, an emerging framing gathers
the evidence of every replica, and a restarted replica rebuilds the view by reading the topics again.

Why every pod reads everything (rather than one triage process): the view is small (bounded by settings,
see docs/sizing) and merging is dict lookups (the transformer ran on the replica that wrote the evidence);
the chart stays one Deployment and the admin API works through any pod.

Determinism: evidence is merged in topic order with the evidence's own time as the clock (never the
reader's), candidate ids derive from sentence keys, and offsets a reader has merged already are dropped
(per source partition: a redelivered batch is counted once). Readers that applied the same records hold
the same state; with one evidence partition (as created) every reader applies them in the same order.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from monitor.logs import get_logger
from monitor.sidecar.windows import WINDOWS, SlidingCounts, _Bucket
from monitor.triage import evidence as ev
from monitor.triage.emerging import EmergingFramings
from monitor.triage.follow import Message
from monitor.triage.incidents import IncidentStore

log = get_logger("framewatch.view")

MAX_SOURCES = 100_000  # source partitions remembered for deduplication (one int each)


class EvidenceCounts(SlidingCounts):
    """Sliding window counts keyed by the evidence's time (monotonic), not the reader's: every reader buckets
    alike. ``totals`` (what /v1/clusters shows) still cuts at the reader's now."""

    def add_at(self, ts: float, cluster: str, framing: str, events: int, failures: int) -> None:
        with self._lock:
            for name, (length, width) in WINDOWS.items():
                buckets = self._data[name].setdefault((cluster, framing), deque())
                start = ts - (ts % width)
                if not buckets or buckets[-1].start < start:
                    buckets.append(_Bucket(start))
                buckets[-1].events += events
                buckets[-1].failures += failures
                while buckets and buckets[0].start <= ts - length:
                    buckets.popleft()


@dataclass
class TriageView:
    incidents: IncidentStore
    emerging: EmergingFramings
    counts: EvidenceCounts
    window_s: float
    promoted: set[str] = field(default_factory=set)  # candidate ids the registry already holds
    events_merged: int = 0
    duplicates_dropped: int = 0
    records_merged: int = 0
    clock: float = 0.0  # the evidence time merged so far (monotonic)
    _seen: dict[tuple[str, int], int] = field(default_factory=dict)  # source partition -> last offset merged
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- feeding ------------------------------------------------------------------------------------------

    def on_flagged(self, msg: Message) -> None:
        self.incidents.add_message(msg.value)

    def on_evidence(self, msg: Message) -> None:
        record = ev.parse(msg.value)
        if self.window_s and msg.timestamp and msg.timestamp / 1000.0 < time.time() - self.window_s:
            return  # aged out: older than the evidence window
        self.apply(record)

    def apply(self, record: ev.Evidence) -> int:
        """Merge one evidence record; returns the events merged (offsets seen before are dropped)."""
        dim = int(self.emerging._centroids.shape[1])
        with self._lock:
            self.clock = now = max(self.clock, record.ts)
            source = (record.topic, record.partition)
            last = self._seen.get(source, -1)
            observations = []
            merged = 0
            for raw in record.events:
                try:
                    entry = ev.entry(raw, record.topic, record.partition, dim)
                except (ValueError, TypeError) as exc:
                    log.warning("evidence_event_skipped", error=str(exc)[:200], topic=record.topic,
                                partition=record.partition)
                    continue
                if entry.offset <= last:
                    self.duplicates_dropped += 1
                    continue
                last = entry.offset
                merged += 1
                self.counts.add_at(now, entry.cluster, entry.framing, 1, int(entry.failing))
                if entry.observation is not None:
                    observations.append(entry.observation)
            if source in self._seen or len(self._seen) < MAX_SOURCES:
                self._seen[source] = last
            self.events_merged += merged
            self.records_merged += 1
        if observations:
            self.emerging.observe_many(observations, now=now)
        self.emerging.expire(now)
        for cid in [c for c in self.promoted if c in self.emerging]:  # re-founded by late evidence
            self.emerging.remove(cid)
        return merged

    def set_promoted(self, sources: list[str | None]) -> None:
        """Candidates promoted into the registry (its clusters' ``source`` says so) leave the candidate list."""
        prefix = "framewatch candidate "
        ids = {s[len(prefix):] for s in sources if isinstance(s, str) and s.startswith(prefix)}
        self.promoted = ids
        for cid in ids:
            self.emerging.remove(cid)

    def stats(self) -> dict[str, Any]:
        return {"events_merged": self.events_merged, "records_merged": self.records_merged,
                "duplicates_dropped": self.duplicates_dropped, "evidence_time": self.clock or None}

