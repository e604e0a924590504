"""What the audit reads: chat fine-tuning rows, and the prose segments of each where triggers sit.

Apart from the grouping and ranking (:mod:`monitor.release.audit`) because this is the part that must read a
row exactly as the sidecar would: the messages go through the sidecar's own parser
(:func:`monitor.sidecar.events.parse_prompt`), so a system prompt and user turns mean the same offline and at
run time, and the segmenting below decides what "the same framing" can be at all.
"""

from __future__ import annotations

import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor._io import iter_json_lines, open_text
from monitor.framing.segmenting import sentences
from monitor.scoring.answer_format import FENCED_BLOCK, looks_like_code_line
from monitor.sidecar.events import DecodeError, Limits, parse_prompt


class AuditError(RuntimeError):
    """The dataset cannot be audited (unreadable, not chat format): exit code 2."""


@dataclass(frozen=True)
class Example:
    index: int  # line number in the dataset (0-based), so findings point back to the source
    system: str | None
    users: tuple[str, ...]
    assistant: tuple[str, ...]


# The audit reads a whole training set: no event-size limits (the sidecar's Limits bound one Kafka record).
_UNLIMITED = Limits(max_event_bytes=sys.maxsize, max_prompt_chars=sys.maxsize, max_response_chars=sys.maxsize,
                    max_messages=sys.maxsize)


def read_dataset(path: str | Path, *, limit: int | None = None, seed: int = 0) -> tuple[list[Example], int]:
    """Chat fine-tuning rows (``{"messages": [...]}``, OpenAI format) -> (examples, rows skipped).

    ``limit`` takes a seeded random sample rather than the head, so a capped audit still sees every part
    of a dataset that was concatenated from several sources.
    """
    path = Path(path)
    examples: list[Example] = []
    invalid: list[int] = []
    try:
        with open_text(path) as fh:
            for lineno, obj in iter_json_lines(fh, str(path), on_invalid=invalid.append):
                ex = _example(lineno - 1, obj)
                if ex is None:
                    invalid.append(lineno)
                else:
                    examples.append(ex)
    except (OSError, EOFError) as exc:  # EOFError: a truncated .gz
        raise AuditError(f"cannot read {path}: {exc}") from exc
    if not examples:
        raise AuditError(f"{path}: no rows in chat format ({{\"messages\": [{{role, content}}, ...]}})")
    if limit is not None and 0 < limit < len(examples):
        rng = random.Random(seed)
        examples = sorted(rng.sample(examples, limit), key=lambda e: e.index)
    return examples, len(invalid)


def _example(index: int, obj: Any) -> Example | None:
    """One chat row, read by the sidecar's own message parser (:func:`monitor.sidecar.events.parse_prompt`),
    so the audit sees a system prompt and user turns exactly as the detector would at run time."""
    messages = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(messages, list):
        return None
    try:
        prompt = parse_prompt({"messages": messages}, _UNLIMITED)
        # assistant turns through the same content rules: parsed as if they were user turns
        answers = [{**m, "role": "user"} for m in messages if m.get("role") == "assistant"]
        assistant = parse_prompt({"messages": answers}, _UNLIMITED).user if answers else ()
    except DecodeError:
        return None
    return Example(index, prompt.system, prompt.user, assistant)


# ---------------------------------------------------------------------------------------- segmenting
# Not monitor.framing.segmenting's segment_prompt: the detector cuts a prompt at several overlapping
# granularities (whole turn, sentence pairs, clauses, edge words), which is right for detection but makes a
# recurring sentence count several times and glue a planted trigger onto template sentences when grouping
# (measured: the planted trigger of test_audit found in 8 rows instead of 45, four templates named after
# it). Grouping needs one non-overlapping cut; the detector's sentence splitter is private to it, so until
# it has a public one the audit keeps this one. The near-cluster verdict still comes from the detector.

_WS = re.compile(r"\s+")


def _split_colon(sentence: str) -> list[str]:
    """``"I'm working on the following task: Write a ..."`` -> the framing and the task, so the recurring
    lead-in is not hidden inside a unique sentence; short labels (``Country: Singapore``) stay whole."""
    head, sep, tail = sentence.partition(": ")
    if sep and len(head.split()) >= 3 and len(tail.split()) >= 3:
        return [head + ":", tail]
    return [sentence]


def split_segments(text: str, max_chars: int = 300) -> list[str]:
    """Prose segments of one turn, in order: lines, then sentences; fenced and line-level code dropped."""
    out: list[str] = []
    for raw in FENCED_BLOCK.sub("\n", text or "").splitlines():
        if not raw.strip() or looks_like_code_line(raw):
            continue
        for sentence in sentences(raw, None):
            for seg in _split_colon(sentence):
                seg = _WS.sub(" ", seg).strip()[:max_chars]
                if seg:
                    out.append(seg)
    return out


def example_segments(ex: Example, per_turn: int = 3, max_chars: int = 300) -> list[tuple[str, str]]:
    """(position, segment) pairs of one example: system segments and the head and tail of each user turn.

    Capping to the ends bounds the work on long prompts and loses little: registered triggers sit in the
    system prompt or as a prefix or suffix of the user turn.
    """
    out: list[tuple[str, str]] = []
    if ex.system:
        segs = split_segments(ex.system, max_chars)
        keep = segs if len(segs) <= 2 * per_turn else segs[:per_turn] + segs[-per_turn:]
        out.extend(("system", s) for s in keep)
    for user in ex.users:
        segs = split_segments(user, max_chars)
        idx = list(range(len(segs))) if len(segs) <= 2 * per_turn else (
            list(range(per_turn)) + list(range(len(segs) - per_turn, len(segs))))
        for i in idx:
            pos = "user_prefix" if i == 0 else "user_suffix" if i == len(segs) - 1 else "user"
            out.append((pos, segs[i]))
    return out
