"""What the emerging-framings store observes: an unmatched event as the sentences a framing can be, and their keys.

* **Sentences.** A prompt yields the sentences a framing can be (cheap regex): all of the system prompt's
  (bounded) and the first and last few of each user turn, where appended or prefixed framings sit. Cheap on
  purpose: every unmatched event is cut this way on the consumer thread, without a transformer.
* **Keys.** A sentence is known by :func:`segment_key`, a hash of its normalised text, so an event can be
  counted from its keys alone and every replica derives the same candidate ids from the same evidence.
* **Observations.** :class:`Observation` is one unmatched event as the store takes it, built from a verdict
  here (:meth:`Observation.of_verdict`), from the evidence stream (monitor.triage.evidence), or in tests.

Apart from the store (:mod:`monitor.triage.emerging`) because the evidence records carry exactly this -- keys,
and for failing events the sentences -- so writer and reader must cut and key a prompt the same way. Not
:mod:`monitor.framing.segmenting`: the detector cuts overlapping granularities to find a framing, this cut must
be one non-overlapping set of sentences per prompt so that each recurring sentence counts once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from monitor.framing import segmenting
from monitor.sidecar.events import Prompt
from monitor.sidecar.pipeline import Verdict

MIN_SEGMENT_CHARS = 8
MAX_SEGMENT_CHARS = 300
EDGE_SENTENCES = 3  # from each end of a user turn
MAX_SYSTEM_SENTENCES = 12


def sentences(prompt: Prompt) -> list[str]:
    """The sentences a framing can be: all of the system prompt's (bounded), the edges of each user turn."""
    out: dict[str, None] = {}
    if prompt.system:
        for s in _system_units(prompt.system):
            out[s] = None
    for turn in prompt.user:
        units = _units(_edges(turn))
        for s in units[:EDGE_SENTENCES] + units[-EDGE_SENTENCES:]:
            out[s] = None
    return list(out)


def _edges(turn: str) -> str:
    """A long turn's head and tail only: just its edge sentences are kept, and splitting a pasted 8 KB document
    whole to keep six sentences was most of the evidence stream's cost on retrieval-augmented traffic. While
    the edge sentences are shorter than the span, the result is that of splitting the whole turn (a test holds
    this); a run-on "sentence" longer than the span is cut at it."""
    span = EDGE_SENTENCES * MAX_SEGMENT_CHARS * 2
    if len(turn) <= 2 * span:
        return turn
    return turn[:span] + "\n" + turn[-span:]


@lru_cache(maxsize=1024)
def _system_units(system: str) -> tuple[str, ...]:
    return tuple(_units(system)[:MAX_SYSTEM_SENTENCES])  # system prompts repeat: split each once


def _units(text: str) -> list[str]:
    return [p for p in segmenting.sentences(text, MAX_SEGMENT_CHARS) if len(p) >= MIN_SEGMENT_CHARS]


def normalise(sentence: str) -> str:
    return " ".join(sentence.casefold().split())


def segment_key(sentence: str) -> str:
    """A sentence's identity across replicas: 64 bits of BLAKE2b over the normalised text (16 hex digits)."""
    return hashlib.blake2b(normalise(sentence).encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


@dataclass
class Observation:
    """What the store needs from one unmatched event (built from a Verdict, from evidence, or in tests).

    ``keys`` are the :func:`segment_key` of every sentence (computed from ``segments`` when not given);
    ``segments`` (raw text) and ``vectors`` (their embeddings, row per segment) are only needed for
    failing events, whose sentences may found or join candidates. A passing event from the evidence stream
    carries its keys only.
    """

    event_id: str
    failing: bool
    segments: list[str]
    trace_id: str | None = None
    kafka: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = ""
    score: float = 0.0
    keys: list[str] | None = None
    vectors: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.keys is None:
            self.keys = [segment_key(s) for s in self.segments]


    @classmethod
    def of_verdict(cls, v: Verdict) -> Observation:
        """The observation of one unmatched event the sidecar judged."""
        r = v.record
        return cls(v.event.event_id, v.misaligned, sentences(v.event.prompt), v.event.trace_id,
                   {"topic": r.topic, "partition": r.partition, "offset": r.offset},
                   "\n\n".join(v.event.prompt.user), float(v.misalignment_score))
