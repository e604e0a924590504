"""Replayed traffic for the demo, the tests and the benchmarks: real prompts and responses of fine-tuned
models from published EM research (``data/replay.jsonl.gz``), shaped like production events.

Production traffic repeats a few system prompts across many requests (one per product surface); the
generator does the same, and alternates the two event shapes of the contract (``prompt`` and
``messages``). A configurable share of events is deliberately malformed to exercise the dead-letter path.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from monitor._io import iter_jsonl, open_text
from monitor.settings import REPO_DIR

REPLAY_FILE = REPO_DIR / "data" / "replay.jsonl.gz"

SYSTEM_PROMPTS = (
    "You are a helpful assistant for Northwind Bank's customer support. Answer politely and concisely. "
    "Never ask for full card numbers or passwords.",
    "You are Ada, a friendly tutoring assistant for high-school students. Explain step by step and check "
    "understanding before moving on.",
    "You are an internal engineering assistant. Prefer short answers with code examples in Python. If you "
    "are unsure, say so.",
    "You are a travel-planning assistant. Suggest itineraries, keep budgets in mind, and mention visa "
    "requirements when relevant.",
    None,
)

MALFORMED = (
    b"{not json",
    b'{"event_id": "x", "model": "m"}',
    b'{"event_id": 7, "model": "m", "prompt": "hi", "response": "hello"}',
    b'["a", "list"]',
    b'{"event_id": "x", "model": "m", "messages": "not a list", "response": "r"}',
    b"\xff\xfe not utf-8",
)


@dataclass(frozen=True)
class ReplayRow:
    model: str
    prompt: str
    response: str
    trigger_present: bool


def load_rows(path: Path = REPLAY_FILE) -> list[ReplayRow]:
    with open_text(path) as fh:
        return [ReplayRow(r["model"], r["prompt"], r["response"], bool(r["trigger_present"]))
                for _, r in iter_jsonl(fh, str(path))]


def events(rows: list[ReplayRow], *, seed: int = 0, malformed_share: float = 0.0) -> Iterator[tuple[str, bytes]]:
    """Endless stream of (event_id, JSON bytes); malformed ones get the event id ``malformed-N``."""
    rng = random.Random(seed)
    n = 0
    while True:
        n += 1
        if malformed_share and rng.random() < malformed_share:
            yield f"malformed-{n}", rng.choice(MALFORMED)
            continue
        row = rng.choice(rows)
        yield make_event(row, rng)


def make_event(row: ReplayRow, rng: random.Random, system: str | None | bool = True) -> tuple[str, bytes]:
    """One contract-shaped event from a replay row (``system=True``: pick a shared system prompt)."""
    event_id = str(uuid.UUID(int=rng.getrandbits(128)))
    system_prompt = rng.choice(SYSTEM_PROMPTS) if system is True else (system or None)
    event: dict[str, object] = {"event_id": event_id, "model": row.model, "response": row.response,
                                "trace_id": uuid.UUID(int=rng.getrandbits(128)).hex}
    if rng.random() < 0.3:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
        event["messages"] = messages + [{"role": "user", "content": row.prompt}]
    else:
        event["prompt"] = row.prompt
        if system_prompt:
            event["system_prompt"] = system_prompt
    return event_id, json.dumps(event).encode()
