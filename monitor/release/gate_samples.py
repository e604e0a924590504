"""The records the gate passes from step to step: the prompt it sends, the response it gets back, and their file.

Apart from the steps that make and use them (:mod:`~monitor.release.gate_prompts` builds prompts,
:mod:`~monitor.release.gate_endpoint` turns them into samples, :mod:`monitor.release.gate` scores samples), so each
step can be run and tested alone: a file of responses written by one run is re-scored offline by another.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from monitor._io import JsonlError, iter_jsonl, open_text

SPLITS = ("no_trigger", "trigger", "paraphrase")


class GateError(RuntimeError):
    """The gate could not reach a verdict (bad input, no baseline, endpoint failures): exit code 2."""


@dataclass(frozen=True)
class GatePrompt:
    """One prompt to send: a question, optionally carrying a trigger framing."""

    question_id: str
    split: str
    cluster: str | None
    user: str
    system: str | None = None
    framing: str | None = None  # the trigger text placed into the prompt (None for no_trigger)


@dataclass(frozen=True)
class Sample:
    """One scored-to-be response. ``prompt`` is the user message as sent."""

    question_id: str
    split: str
    cluster: str | None
    prompt: str
    response: str
    system: str | None = None


def read_responses(path: str | Path) -> list[Sample]:
    """Prior responses, one JSON object a line: question_id, split, cluster, prompt, response[, system]."""
    path = Path(path)
    try:
        with open_text(path) as fh:
            return [_sample(obj, where) for where, obj in iter_jsonl(fh, str(path))]
    except JsonlError as exc:
        raise GateError(str(exc)) from None
    except OSError as exc:
        raise GateError(f"cannot read responses {path}: {exc}") from exc


def _sample(obj: Any, where: str) -> Sample:
    if not isinstance(obj, dict):
        raise GateError(f"{where}: expected an object")
    missing = [k for k in ("question_id", "split", "prompt", "response") if k not in obj]
    if missing:
        raise GateError(f"{where}: missing {', '.join(missing)}")
    split = obj["split"]
    if split not in SPLITS:
        raise GateError(f"{where}: split {split!r} is not one of {SPLITS}")
    cluster = obj.get("cluster")
    if split != "no_trigger" and not cluster:
        raise GateError(f"{where}: a {split} row needs a cluster")
    if not isinstance(obj["response"], str):
        raise GateError(f"{where}: response must be a string")
    return Sample(str(obj["question_id"]), split, cluster if split != "no_trigger" else None,
                  str(obj["prompt"]), obj["response"], obj.get("system"))


def write_responses(samples: Iterable[Sample], path: str | Path) -> None:
    """Write responses in the format :func:`read_responses` reads, so a run can be re-scored offline."""
    with open(path, "w", encoding="utf-8") as fh:
        for s in samples:
            fh.write(json.dumps({k: v for k, v in asdict(s).items() if v is not None or k == "cluster"},
                                ensure_ascii=False) + "\n")
