"""A long user turn is split from its two ends only; the segments must be exactly those of splitting it whole.

Real text: long pastes built from the answers in data/em_responses.jsonl.gz, with code fences, list items and a
trigger-like last line mixed in, plus every user turn of the framing evaluation and corpus sets.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from monitor.framing import segmenting

DATA = Path(__file__).resolve().parents[3] / "data"


def _turns() -> list[str]:
    turns = []
    for path in sorted(DATA.glob("framing/*/*/*.jsonl")) + sorted(DATA.glob("framing/corpus/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                turns += [row[k] for k in ("prompt", "text") if isinstance(row.get(k), str)]
    with gzip.open(DATA / "em_responses.jsonl.gz", "rt", encoding="utf-8") as fh:
        answers = [json.loads(line)["answer_clean"] or "" for line in fh]
    rng = random.Random(7)
    for _ in range(400):
        parts = rng.sample(answers, 12)
        if rng.random() < 0.3:  # a fence spanning the middle of the turn
            parts.insert(rng.randrange(12), "```python\nx = f(a)[0]\n" + "y = 1\n" * 50 + "```")
        parts.append(rng.choice(["Reply inside <start> and <end>.", "What is this?", "- item one\n- item two"]))
        turns.append("\n\n".join(parts))
    return turns


def test_edge_split_equals_whole_split(monkeypatch: pytest.MonkeyPatch) -> None:
    turns = _turns()
    cut = [segmenting.user_segments(t) for t in turns]
    took_edges = sum(segmenting._edge_sentences(t) is not None for t in turns)
    monkeypatch.setattr(segmenting, "_edge_sentences", lambda turn: None)
    whole = [segmenting.user_segments(t) for t in turns]
    assert took_edges >= 300  # the long pastes do take the edge path
    assert [i for i, (a, b) in enumerate(zip(cut, whole, strict=True)) if a != b] == []
