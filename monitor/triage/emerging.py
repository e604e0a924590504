"""Emerging framings: recurring prompt sentences, in no known cluster, whose responses fail unusually often.

The registry only knows the triggers someone already wrote down. A new trigger shows up first as failing
responses on prompts that match no cluster; what those prompts share is a *sentence* (e.g. "Answer as a
pirate would.") next to otherwise unrelated questions. So, online and in bounded memory:

* **Sentences** (:mod:`monitor.triage.observations`): a prompt yields the sentences a framing can be, each
  known by its :func:`~monitor.triage.observations.segment_key`.
* **Discovery** (failing, unmatched events only, ~1% of traffic): each sentence not yet known is embedded
  (the Embedder's LRU cache serves repeats) and joins the nearest candidate within ``join_threshold`` cosine
  of its centroid (a running mean), or founds a new candidate. So paraphrases of one framing gather in one
  candidate, as its *member sentences*.
* **Rates** (every unmatched event, failing or not): an event counts towards a candidate when one of its
  sentences is a member (normalised text, a dict lookup: no transformer, so this scales to the full
  stream). The rule is the same for failing and passing events, and an event is counted *before* it can
  add members, so a candidate's count holds only events that came after its members were known: no
  selection bias from the failure that founded it, and Wilson's interval applies.
  (Why not embed every event's sentences: user turns are mostly unique, and the transformer manages a few
  hundred segments per second; embedding every sentence would cap the sidecar far below its throughput.)
* **Significance**: at least ``min_events`` events and the candidate's Wilson lower bound above the Wilson
  upper bound of unmatched traffic *without* that candidate's events. Shared boilerplate (a system prompt)
  is tracked too, but fails at the baseline rate. Significant candidates are counted in
  ``framewatch_emerging_framings`` (one unlabelled gauge: no text ever becomes a label).
* **Bounded memory**: at most ``max_candidates`` centroids (a preallocated matrix), ``max_members`` member
  sentences and ``max_examples`` redacted examples each. Counts decay with ``half_life_s``; when full, the
  candidate with the least decayed weight (ties: least recently seen) is evicted, so a flood of distinct
  prompts churns one-off candidates and leaves recurring ones alone.

* **Mergeable across replicas**: members are keyed by :func:`~monitor.triage.observations.segment_key`, so an event
  can be counted from its keys alone, and candidate ids derive from the founding
  sentence's key: the store can be fed from the evidence stream every replica writes
  (monitor.triage.evidence), with each observation's time as the clock, and every reader that applies the
  same evidence in the same order holds the same candidates with the same ids.

Limits: a paraphrase is counted once it has been seen in a failing event (it then becomes a member); a
framing whose second failure comes only after ``max_candidates`` other new failing sentences has been
forgotten in between (raise ``max_candidates`` for very diverse failing traffic).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor import stats
from monitor.logs import get_logger
from monitor.settings import Settings
from monitor.sidecar.pipeline import Verdict
from monitor.triage.observations import Observation, segment_key, sentences

__all__ = ["EmergingConfig", "EmergingFramings", "Observation", "segment_key", "sentences"]

log = get_logger("framewatch.emerging")

Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class EmergingConfig:
    """The store's bounds and statistics; the defaults are the settings' (``FRAMEWATCH_EMERGING_*``)."""

    max_candidates: int = Settings.emerging_max_candidates
    join_threshold: float = Settings.emerging_join_threshold
    min_events: int = Settings.emerging_min_events
    half_life_s: float = Settings.emerging_half_life_s
    max_examples: int = Settings.emerging_max_examples
    max_members: int = Settings.emerging_max_members
    window_s: float = Settings.evidence_window_s  # a candidate not seen for this long is dropped (evidence ages out)

    @classmethod
    def from_settings(cls, settings: Settings) -> EmergingConfig:
        return cls(max_candidates=settings.emerging_max_candidates, join_threshold=settings.emerging_join_threshold,
                   min_events=settings.emerging_min_events, half_life_s=settings.emerging_half_life_s,
                   max_examples=settings.emerging_max_examples, max_members=settings.emerging_max_members,
                   window_s=settings.evidence_window_s)


@dataclass
class _Candidate:
    id: str
    created: float
    members: dict[str, int] = field(default_factory=dict)  # sentence key -> events seen with it
    texts: dict[str, str] = field(default_factory=dict)  # key -> first raw sentence seen
    examples: deque[dict[str, Any]] = field(default_factory=deque)
    failures_seen: int = 0  # failing events counted (not decayed): for display

    def ranked(self) -> list[str]:
        return [self.texts[m] for m, _ in sorted(self.members.items(), key=lambda kv: -kv[1])]


class EmergingFramings:
    """The online candidate store. ``observe`` runs on the consumer thread; readers take the lock."""

    def __init__(self, embed: Embed | None, dim: int, config: EmergingConfig | None = None,
                 redact: Callable[[str | None], str | None] = lambda t: t,
                 gauge: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.cfg = config or EmergingConfig()
        self._embed = embed
        self._redact = redact
        self._gauge = gauge
        self._clock = clock
        self._lock = threading.Lock()
        cap = self.cfg.max_candidates
        self._centroids = np.zeros((cap, dim), dtype=np.float32)
        self._active = np.zeros(cap, dtype=bool)
        self._mass = np.zeros(cap, dtype=np.float32)  # sentences averaged into the centroid (capped)
        self._n = np.zeros(cap, dtype=np.float64)  # events with a member sentence (decayed)
        self._k = np.zeros(cap, dtype=np.float64)  # ... of which failing (decayed)
        self._weight = np.zeros(cap, dtype=np.float64)  # eviction priority (decayed)
        self._last_seen = np.zeros(cap, dtype=np.float64)
        self._slots: list[_Candidate | None] = [None] * cap
        self._by_id: dict[str, int] = {}
        self._members: dict[str, int] = {}  # member sentence key -> slot (<= cap * max_members)
        self._base_n = 0.0  # unmatched events (decayed)
        self._base_k = 0.0
        self._decayed_at: float | None = None  # the first observation's time (evidence may be older than now)
        self._announced: set[str] = set()  # candidate ids already logged as significant (bounded by cap)
        self.evictions = 0
        self.observed = 0  # unmatched events seen since start (not decayed)

    # -- ingest --------------------------------------------------------------------------------------

    def observe(self, verdicts: Sequence[Verdict]) -> dict[str, str]:
        """Take a batch's verdicts; returns event_id -> significant candidate id for events that hit one."""
        return self.observe_many([Observation.of_verdict(v) for v in verdicts if v.framing.framing == "none"])

    def observe_many(self, observations: Sequence[Observation], now: float | None = None) -> dict[str, str]:
        """Count, then discover; ``now`` is the observations' time (evidence time), default the clock.

        Returns event_id -> significant candidate id for events that hit one.
        """
        with self._lock:
            known = set(self._members)
        # Embed, in one call, the failing sentences not already members that came without a vector.
        new = list(dict.fromkeys(s for o in observations if o.failing and o.vectors is None
                                 for s, key in zip(o.segments, o.keys or [], strict=False) if key not in known))
        vectors = (self._embed(new) if new and self._embed is not None
                   else np.zeros((0, self._centroids.shape[1]), np.float32))
        index = {t: i for i, t in enumerate(new)} if len(vectors) else {}
        out: dict[str, str] = {}
        with self._lock:
            now = self._clock() if now is None else now
            self._decay(now)
            for o in observations:
                self.observed += 1
                hit = self._count(o, now)
                if o.failing:
                    self._discover(o, vectors, index, now)
                significant = [j for j in hit if self._significant(j)]
                if significant:
                    out[o.event_id] = self._announce(significant[0])
            if self._gauge is not None:
                self._gauge.set(self._significant_count())
        return out

    def hit(self, keys: Sequence[str]) -> str | None:
        """The significant candidate one of these sentence keys belongs to, if any (read only)."""
        with self._lock:
            for key in keys:
                j = self._members.get(key)
                if j is not None and self._significant(j):
                    cand = self._slots[j]
                    return cand.id if cand is not None else None
        return None

    def expire(self, now: float) -> int:
        """Drop candidates not seen within ``window_s`` of ``now``; returns how many."""
        with self._lock:
            cutoff = now - self.cfg.window_s
            stale = [int(j) for j in np.flatnonzero(self._active & (self._last_seen < cutoff))]
            for j in stale:
                self._drop(j)
            if stale and self._gauge is not None:
                self._gauge.set(self._significant_count())
            return len(stale)

    def _announce(self, j: int) -> str:
        """Log (once, without text) when a candidate first becomes significant; returns its id."""
        cand = self._slots[j]
        assert cand is not None
        if cand.id not in self._announced:
            self._announced.add(cand.id)
            n, k, n0, k0 = self._rates(j)
            log.warning("emerging_framing_significant", candidate=cand.id, events=round(n), failures=round(k),
                        baseline_events=round(n0), baseline_failures=round(k0), unmatched_events_seen=self.observed)
        return cand.id

    def _count(self, o: Observation, now: float) -> set[int]:
        """Count the event towards the baseline and every candidate one of its sentences is a member of."""
        self._base_n += 1
        self._base_k += int(o.failing)
        hit: dict[int, str] = {}
        for key in o.keys or []:
            j = self._members.get(key)
            if j is not None and j not in hit:
                hit[j] = key
        for j, key in hit.items():
            cand = self._slots[j]
            assert cand is not None
            self._n[j] += 1
            self._k[j] += int(o.failing)
            self._weight[j] += 1
            self._last_seen[j] = now
            cand.members[key] += 1
            if o.failing:
                cand.failures_seen += 1
                cand.examples.append({"event_id": o.event_id, "trace_id": o.trace_id, "kafka": o.kafka,
                                      "segment": self._redact(cand.texts[key]), "prompt": self._redact(o.prompt),
                                      "misalignment_score": round(o.score, 4)})
        return set(hit)

    def _discover(self, o: Observation, vectors: np.ndarray, index: dict[str, int], now: float) -> None:
        """New sentences of a failing event join the nearest candidate, or found one."""
        given = o.vectors is not None
        for i, (s, key) in enumerate(zip(o.segments, o.keys or [], strict=False)):
            if key in self._members:
                continue
            if given:
                assert o.vectors is not None
                if i >= len(o.vectors):
                    continue
                vec = o.vectors[i]
            elif s in index:
                vec = vectors[index[s]]
            else:
                continue
            active = np.flatnonzero(self._active)
            j = -1
            if active.size:
                sims = self._centroids[active] @ vec
                best = int(np.argmax(sims))
                if float(sims[best]) >= self.cfg.join_threshold:
                    j = int(active[best])
            if j < 0:
                self._found(key, s, vec, now)
            else:
                self._absorb(j, key, s, vec)

    def _found(self, key: str, text: str, vec: np.ndarray, now: float) -> int:
        free = np.flatnonzero(~self._active)
        if free.size:
            j = int(free[0])
        else:
            j = int(np.lexsort((self._last_seen, self._weight))[0])
            self._drop(j)
            self.evictions += 1
        cand = _Candidate(id=f"cand_{key}", created=now, examples=deque(maxlen=self.cfg.max_examples))
        cand.members[key], cand.texts[key] = 0, text
        self._slots[j] = cand
        self._by_id[cand.id] = j
        self._members[key] = j
        self._active[j] = True
        self._centroids[j] = vec
        self._mass[j] = 1.0
        self._n[j] = self._k[j] = 0.0
        self._weight[j] = 1.0
        self._last_seen[j] = now
        return j

    def _absorb(self, j: int, key: str, text: str, vec: np.ndarray) -> None:
        cand = self._slots[j]
        assert cand is not None
        if len(cand.members) < self.cfg.max_members:
            cand.members[key], cand.texts[key] = 0, text
            self._members[key] = j
        mass = min(float(self._mass[j]), 50.0)  # older members do not pin the centroid forever
        c = self._centroids[j] * mass + vec
        self._centroids[j] = c / max(float(np.linalg.norm(c)), 1e-6)
        self._mass[j] = mass + 1.0
        self._weight[j] += 1.0

    def _drop(self, j: int) -> None:
        cand = self._slots[j]
        if cand is not None:
            self._by_id.pop(cand.id, None)
            self._announced.discard(cand.id)
            for key in cand.members:
                if self._members.get(key) == j:
                    del self._members[key]
        self._slots[j] = None
        self._active[j] = False
        self._n[j] = self._k[j] = self._weight[j] = 0.0

    def _decay(self, now: float) -> None:
        if self._decayed_at is None:
            self._decayed_at = now
        dt = now - self._decayed_at
        if dt <= 0 or self.cfg.half_life_s <= 0:
            return
        f = 0.5 ** (dt / self.cfg.half_life_s)
        self._n *= f
        self._k *= f
        self._weight *= f
        self._base_n *= f
        self._base_k *= f
        self._decayed_at = now

    # -- statistics -----------------------------------------------------------------------------------

    def _rates(self, j: int) -> tuple[float, float, float, float]:
        """(n, k, n0, k0): a candidate's events and failures, and the unmatched traffic without them."""
        n, k = float(self._n[j]), min(float(self._k[j]), float(self._n[j]))
        n0 = max(self._base_n - n, 0.0)
        k0 = min(max(self._base_k - k, 0.0), n0)
        return n, k, n0, k0

    def _significant(self, j: int) -> bool:
        n, k, n0, k0 = self._rates(j)
        if n < self.cfg.min_events or n0 < self.cfg.min_events:
            return False
        return _wilson(k, n)[0] > _wilson(k0, n0)[1]

    def _significant_count(self) -> int:
        return sum(1 for j in np.flatnonzero(self._active) if self._significant(int(j)))

    # -- reading ---------------------------------------------------------------------------------------

    def snapshot(self, *, significant_only: bool = True, limit: int = 50) -> list[dict[str, Any]]:
        """Candidates for the API (text redacted): significant first, then by events."""
        with self._lock:
            out: list[dict[str, Any]] = []
            for slot in np.flatnonzero(self._active):
                j = int(slot)
                sig = self._significant(j)
                if significant_only and not sig:
                    continue
                cand = self._slots[j]
                assert cand is not None
                n, k, n0, k0 = self._rates(j)
                ranked = cand.ranked()
                out.append({
                    "id": cand.id, "significant": sig,
                    "representative": self._redact(ranked[0]),
                    "members": [self._redact(t) for t in ranked],
                    "events": round(n), "failures": round(k), "failures_seen": cand.failures_seen,
                    "failure_rate": (k / n) if n else None, "ci": list(_wilson(k, n)),
                    "baseline": {"events": round(n0), "failures": round(k0),
                                 "failure_rate": (k0 / n0) if n0 else None, "ci": list(_wilson(k0, n0))},
                    "examples": list(cand.examples)[::-1],
                    "first_seen": cand.created, "last_seen": float(self._last_seen[j]),
                })
        out.sort(key=lambda c: (not c["significant"], -int(c["events"]), -int(c["failures_seen"]), str(c["id"])))
        return out[:limit]

    def phrases(self, candidate_id: str, limit: int = 3) -> list[str]:
        """The candidate's most frequent raw sentences: the phrases a promotion writes to the registry."""
        with self._lock:
            j = self._by_id.get(candidate_id)
            if j is None:
                raise KeyError(candidate_id)
            cand = self._slots[j]
            assert cand is not None
            return cand.ranked()[:limit]

    def remove(self, candidate_id: str) -> None:
        with self._lock:
            j = self._by_id.get(candidate_id)
            if j is not None:
                self._drop(j)
            if self._gauge is not None:
                self._gauge.set(self._significant_count())

    def __len__(self) -> int:
        return int(self._active.sum())

    def __contains__(self, candidate_id: object) -> bool:
        return candidate_id in self._by_id

    def significant_count(self) -> int:
        with self._lock:
            return self._significant_count()


def _wilson(k: float, n: float) -> tuple[float, float]:
    """Wilson on (decayed, hence fractional) counts, rounded to whole events."""
    if n <= 0:
        return (0.0, 1.0)
    n_i = max(int(round(n)), 1)
    k_i = min(max(int(round(k)), 0), n_i)
    return stats.wilson_interval(k_i, n_i)
