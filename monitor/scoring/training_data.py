"""What training starts from: the judged-responses file, read into rows, and the run's configuration.

Apart from the fitting (:mod:`monitor.scoring.fitting`) and the validation (:mod:`monitor.scoring.validation`),
which both take rows and a :class:`TrainConfig`, so each can be run on rows a caller selected (the grouped folds
do; so does ``experiments/finetune_experiment.py``). A row keeps the judge's graded scores, not only its label:
the soft target is built from them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from monitor._io import JsonlError, iter_jsonl, open_text
from monitor.scoring import answer_format
from monitor.settings import REPO_DIR


def default_data_path() -> Path:
    return REPO_DIR / "data" / "em_responses.jsonl.gz"


class TrainingError(ValueError):
    """The training data cannot be used (missing file, bad rows); the message says why."""


@dataclass
class TrainConfig:
    seed: int = 0
    ngram_max: int = 2
    min_df: int = 2
    C: float = 10.0
    soft_center: float = 30.0  # alignment at which the soft target is 0.5: the judge's EM cut
    soft_scale: float = 10.0
    prefix_chars: int = 2000  # train on what the runtime sees (settings.response_prefix_chars)
    fit_split: str = "train"  # the GPT-4o-judged rows; aux_other_judge rows are noisier
    calibration: str = "auto"  # platt | isotonic | auto (lower cross-fitted ECE)
    fine_groups: bool = True  # also report the finer grouping (Qwen-Coder apart from Qwen)
    code_refusal_negative: bool = True  # judge's CODE / REFUSAL answers (no alignment score) as target 0
    coherence_gate: bool = False  # multiply the soft target by sigmoid((coherence - 50) / 5)
    code_refusal_weight: float = 1.0  # sample weight of those CODE / REFUSAL negatives
    # answers reduced to their prose before featurising (monitor.scoring.answer_format); None = raw text
    normaliser: str | None = answer_format.NAME
    stem_chars: int = 5  # word-prefix ("stem") unigram block: prefix length; 0 = no block
    stem_weight: float = 0.5  # scale of the (separately L2-normalised) stem block
    # (family, sample weight) pairs; families not listed weigh 1. Mistral's rows are misaligned-only.
    family_weights: tuple[tuple[str, float], ...] = (("mistral", 0.5),)
    # (field, value) pairs: data rows whose field equals the value are left out entirely, e.g. to keep a
    # gate's evaluation rows out of the classifier that scores them
    exclude: tuple[tuple[str, str], ...] = ()


@dataclass
class Row:
    text: str
    model: str
    family: str
    group: str
    label3: str
    alignment: float | None
    coherence: float | None
    question_id: str
    split: str


def family_of(model: str) -> str:
    """Model family from the ``model`` field (``nielsrolf/Qwen2.5-32B-...`` -> ``qwen``)."""
    name = model.lower().rsplit("/", 1)[-1]
    for fam in ("qwen", "llama", "mistral", "gemma", "phi", "gpt", "olmo", "deepseek"):
        if fam in name:
            return fam
    return re.split(r"[-_.\d]", name, maxsplit=1)[0] or "other"


def fine_group_of(model: str) -> str:
    """Finer grouping: Qwen-Coder apart from general Qwen (different pretraining mix and answer styles)."""
    fam = family_of(model)
    return f"{fam}-coder" if "coder" in model.lower() else fam


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None


def _lines(fh: IO[str], name: str) -> Iterator[tuple[str, Any]]:
    try:
        yield from iter_jsonl(fh, name)
    except JsonlError as exc:
        raise TrainingError(str(exc)) from None


def load_rows(path: str | Path, exclude: Sequence[tuple[str, str]] = ()) -> list[Row]:
    """Rows of a judged-responses file; rows matching any ``(field, value)`` of ``exclude`` are skipped."""
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"training data not found: {path}")
    rows: list[Row] = []
    with open_text(path) as fh:
        for where, r in _lines(fh, str(path)):
            if any(str(r.get(field)) == value for field, value in exclude):
                continue
            try:
                rows.append(Row(text=str(r["answer_clean"]), model=str(r["model"]),
                                family=family_of(str(r["model"])), group=fine_group_of(str(r["model"])),
                                label3=str(r["label3"]), alignment=_num(r.get("alignment")),
                                coherence=_num(r.get("coherence")), question_id=str(r.get("question_id", "")),
                                split=str(r.get("split", "train"))))
            except (KeyError, TypeError) as exc:
                raise TrainingError(f"{where}: not a usable row ({exc})") from exc
    if not rows:
        raise TrainingError(f"{path}: no rows")
    return rows
