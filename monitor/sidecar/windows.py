"""In-memory sliding windows of events and failures per (cluster, framing): the ``/v1/status`` rates.

Every replica counts its own events here. With the shared triage view on (the default), ``/v1/status``
answers from the windows merged over every replica's evidence stream (monitor.triage, docs/triage.md), so
the answer does not depend on which pod serves it; with it off, from this replica's windows only. Memory is
bounded: keys come from the registry (clusters x framings), buckets from the window length.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from monitor import stats

WINDOWS: dict[str, tuple[float, float]] = {"5m": (300.0, 5.0), "1h": (3600.0, 60.0)}  # name: (length, bucket)


@dataclass
class _Bucket:
    start: float
    events: int = 0
    failures: int = 0


class SlidingCounts:
    """Counts per key over several sliding windows, bucketed so memory does not grow with traffic."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._data: dict[str, dict[tuple[str, str], deque[_Bucket]]] = {name: {} for name in WINDOWS}

    def add(self, cluster: str, framing: str, events: int, failures: int) -> None:
        now = self._clock()
        with self._lock:
            for name, (length, width) in WINDOWS.items():
                buckets = self._data[name].setdefault((cluster, framing), deque())
                start = now - (now % width)
                if not buckets or buckets[-1].start != start:
                    buckets.append(_Bucket(start))
                buckets[-1].events += events
                buckets[-1].failures += failures
                while buckets and buckets[0].start <= now - length:
                    buckets.popleft()

    def forget(self, keep_clusters: set[str]) -> None:
        """Drop keys of clusters no longer in the registry (after a reload)."""
        with self._lock:
            for data in self._data.values():
                for key in [k for k in data if k[0] not in keep_clusters]:
                    del data[key]

    def totals(self, window: str) -> dict[tuple[str, str], tuple[int, int]]:
        length, _ = WINDOWS[window]
        cutoff = self._clock() - length
        with self._lock:
            return {
                key: (sum(b.events for b in bs if b.start > cutoff), sum(b.failures for b in bs if b.start > cutoff))
                for key, bs in self._data[window].items()
            }


def status(counts: SlidingCounts, clusters: list[str]) -> dict[str, object]:
    """Per window: per cluster and framing the failure rate with a Wilson interval, and the containment gap
    (triggered minus untriggered failure rate) with its Newcombe interval and a two-proportion p-value."""
    out: dict[str, object] = {}
    for window in WINDOWS:
        totals = counts.totals(window)
        base_n = sum(n for (c, f), (n, _) in totals.items() if f == "none")
        base_k = sum(k for (c, f), (_, k) in totals.items() if f == "none")
        per_cluster = []
        for cluster in clusters:
            framings = {}
            trig_n = trig_k = 0
            for framing in ("exact", "semantic"):
                n, k = totals.get((cluster, framing), (0, 0))
                trig_n, trig_k = trig_n + n, trig_k + k
                framings[framing] = _rate(k, n)
            gap = None
            if trig_n and base_n:
                lo, hi = stats.diff_interval(trig_k, trig_n, base_k, base_n)
                gap = {"gap": trig_k / trig_n - base_k / base_n, "ci": [lo, hi],
                       "p_value": stats.two_proportion_test(trig_k, trig_n, base_k, base_n)}
            per_cluster.append({"cluster": cluster, "framings": framings, "triggered": _rate(trig_k, trig_n),
                                "gap": gap})
        out[window] = {"untriggered": _rate(base_k, base_n), "clusters": per_cluster}
    return out


def _rate(k: int, n: int) -> dict[str, object]:
    lo, hi = stats.wilson_interval(k, n) if n else (0.0, 1.0)
    return {"events": n, "failures": k, "failure_rate": (k / n) if n else None, "ci": [lo, hi]}
