"""A replica's recent view of flagged events, for ``GET /v1/incidents``.

Bounded (a ring of ``capacity`` records, already redacted) and deduplicated by the source event's Kafka
coordinates, so a batch redelivered after a crash is listed once. At start a replica may rebuild the view
from the tail of the flagged topic, which every replica writes: after a restart (or on a fresh replica)
on-call still sees what happened just before.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from monitor.logs import get_logger

log = get_logger("framewatch.incidents")


def _coords(rec: dict[str, Any]) -> tuple[str, int, int]:
    k = rec.get("kafka") or {}
    return (str(k.get("topic")), int(k.get("partition", -1)), int(k.get("offset", -1)))


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
    except ValueError:
        return 0.0


class IncidentStore:
    """The last ``capacity`` flagged records, newest last; thread-safe (consumer writes, HTTP reads)."""

    def __init__(self, capacity: int = 2000) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, int, int], dict[str, Any]] = OrderedDict()

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            for rec in records:
                key = _coords(rec)
                self._items.pop(key, None)
                self._items[key] = rec
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def query(self, *, cluster: str | None = None, framing: str | None = None, since: float | None = None,
              limit: int = 100, candidate: str | None = None) -> list[dict[str, Any]]:
        """Newest first, filtered; ``cluster="none"`` selects events without a known cluster."""
        with self._lock:
            items = list(self._items.values())
        out = []
        for rec in reversed(items):
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


def rebuild_from_topic(store: IncidentStore, topic: str, consumer_factory: Callable[[], Any],
                       max_records: int | None = None, timeout_s: float = 20.0) -> int:
    """Load the tail of the flagged topic into ``store`` (no consumer group: plain assign + seek).

    Best effort: a missing topic or an unreachable broker leaves the view empty and is only logged.
    Returns the number of records loaded.
    """
    import time

    from kafka import TopicPartition

    max_records = max_records or store.capacity
    loaded = 0
    consumer = None
    try:
        consumer = consumer_factory()
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            log.info("incidents_rebuild_skipped_no_topic", topic=topic)
            return 0
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        begins = consumer.beginning_offsets(tps)
        per = max(max_records // len(tps), 1)
        remaining = {}
        for tp in tps:
            start = max(begins.get(tp, 0), ends.get(tp, 0) - per)
            if ends.get(tp, 0) > start:
                consumer.seek(tp, start)
                remaining[tp] = ends[tp]
        deadline = time.monotonic() + timeout_s
        records: list[dict[str, Any]] = []
        while remaining and time.monotonic() < deadline:
            for tp, batch in consumer.poll(timeout_ms=500).items():
                for msg in batch:
                    try:
                        rec = json.loads(msg.value)
                    except (TypeError, ValueError):
                        continue
                    if isinstance(rec, dict):
                        records.append(rec)
                    if msg.offset + 1 >= remaining.get(tp, 0):
                        remaining.pop(tp, None)
        records.sort(key=_flagged_ts)
        store.add(records)
        loaded = len(records)
        log.info("incidents_rebuilt_from_topic", topic=topic, records=loaded)
    except Exception as exc:  # noqa: BLE001 - best effort; the live view fills from new traffic anyway
        log.warning("incidents_rebuild_failed", topic=topic, error=f"{type(exc).__name__}: {exc}")
    finally:
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.close()
    return loaded
