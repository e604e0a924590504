"""The incident view for ``GET /v1/incidents``: the newest flagged events, from the flagged topic.

Every replica writes the flagged events it finds to the flagged topic, and every replica reads the whole
topic (monitor.triage.follow, no consumer group, starting at each partition's tail), so every replica holds
the same view and a restarted one rebuilds it from the topic. For the answer not to depend on the pod:

* deduplicated by the source event's Kafka coordinates and event id, keeping the *first* copy (a batch redelivered after
  a crash is listed once, and every reader keeps the same copy: copies of one event share a flagged-topic
  partition, hence an order);
* ordered by (``flagged_at``, coordinates), and bounded by ``capacity`` records *and* ``max_bytes`` of JSON:
  when over either, the oldest go.
"""

from __future__ import annotations

import heapq
import json
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any


def _coords(rec: dict[str, Any]) -> tuple[str, int, int, str]:
    """Kafka coordinates plus the event id: an OTLP record holds many events (one per span)."""
    k = rec.get("kafka") or {}
    return (str(k.get("topic")), int(k.get("partition", -1)), int(k.get("offset", -1)), str(rec.get("event_id")))


def parse_since(value: str | float | None) -> float | None:
    """``since`` as epoch seconds: a number, or an RFC 3339 / ISO 8601 time (naive = UTC)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    text = str(value).strip().replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"since={value!r}: give epoch seconds or an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _flagged_ts(rec: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(rec.get("flagged_at"))).timestamp()
    except (ValueError, OverflowError):
        return 0.0


class IncidentStore:
    """The newest flagged records, bounded by count and bytes; thread-safe (readers and writers)."""

    def __init__(self, capacity: int = 2000, max_bytes: int = 16_000_000) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._lock = threading.Lock()
        self._items: dict[tuple[str, int, int, str],
                          tuple[tuple[float, tuple[str, int, int, str]], dict[str, Any], int]] = {}
        self._heap: list[tuple[float, tuple[str, int, int, str]]] = []  # (flagged_at, coords): oldest first

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            for rec in records:
                key = _coords(rec)
                if key in self._items:
                    continue
                order = (_flagged_ts(rec), key)
                size = len(json.dumps(rec, ensure_ascii=False, default=str))
                self._items[key] = (order, rec, size)
                heapq.heappush(self._heap, order)
                self.bytes += size
            while self._items and (len(self._items) > self.capacity or self.bytes > self.max_bytes):
                _, key = heapq.heappop(self._heap)
                _, _, size = self._items.pop(key)
                self.bytes -= size

    def add_message(self, value: bytes | None) -> None:
        """One record of the flagged topic (raises ValueError when it is not a flagged record)."""
        if value is None:
            raise ValueError("empty record")
        rec = json.loads(value)
        if not isinstance(rec, dict) or not isinstance(rec.get("kafka"), dict):
            raise ValueError("not a flagged record")
        _coords(rec)  # raises on coordinates that are not numbers
        self.add([rec])

    def __len__(self) -> int:
        return len(self._items)

    def query(self, *, cluster: str | None = None, framing: str | None = None, since: float | None = None,
              limit: int = 100, candidate: str | None = None) -> list[dict[str, Any]]:
        """Newest first, filtered; ``cluster="none"`` selects events without a known cluster."""
        with self._lock:
            items = sorted(self._items.values(), key=lambda t: t[0], reverse=True)
        out = []
        for _, rec, _ in items:
            if cluster is not None and (rec.get("cluster") or "none") != cluster:
                continue
            if framing is not None and rec.get("framing") != framing:
                continue
            if candidate is not None and rec.get("candidate") != candidate:
                continue
            if since is not None and _flagged_ts(rec) < since:
                continue
            out.append(rec)
            if len(out) >= limit:
                break
        return out
