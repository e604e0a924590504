"""Framing accuracy *by source*: who or what wrote each evaluation set decides how far its figure can be trusted.

A detector tuned on sets written in one style scores well on that style and is then checked from outside on
wording nobody here wrote; the gap has been large (persona recall 0.90-1.00 on the team's sets, 0.68 outside).
So every evaluation folder carries a ``SOURCE.yaml`` - who produced it (``hand-written``, ``generated``,
``external``) and whether anything was ever tuned on it - and the figure this module puts first is the **worst
source nobody tuned on**, per cluster, never a pool that a well-fitted source can carry.

Layout (``data/framing``)::

    eval/<source>/SOURCE.yaml, NN-name.jsonl     rows {"kind": paraphrase|exact|lookalike, "cluster", ...}
    benign/<source>/SOURCE.yaml, NN-name.jsonl   benign rows (any flag is a false positive); or ``file:`` +
                                                 ``split:`` in SOURCE.yaml to point at a shared file

Rows are prompts in the event contract's shapes (``prompt`` + ``system_prompt``, or ``messages``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from monitor._io import iter_jsonl, open_text
from monitor.framing.detector import FramingResult
from monitor.sidecar.events import Limits, Prompt, parse_prompt

POSITIVE_KINDS = ("paraphrase", "exact")
PRODUCERS = ("hand-written", "generated", "external")


class Detects(Protocol):
    """What evaluation needs of a detector."""

    def detect_many(self, prompts: Sequence[Prompt]) -> list[FramingResult]: ...


@dataclass(frozen=True)
class Source:
    name: str
    role: str  # "eval" (positives and look-alikes) or "benign"
    produced_by: str
    tuned_on: bool
    description: str
    sets: tuple[tuple[str, tuple[dict[str, Any], ...]], ...]  # (set name, rows)


@dataclass
class SourceResult:
    source: Source
    positives: dict[str, list[int]] = field(default_factory=dict)  # cluster -> [found, total]
    exact: list[int] = field(default_factory=lambda: [0, 0])
    lookalikes: list[int] = field(default_factory=lambda: [0, 0])
    benign: list[int] = field(default_factory=lambda: [0, 0])
    errors: list[dict[str, Any]] = field(default_factory=list)


class EvaluationError(ValueError):
    """An evaluation folder or row cannot be used; the message says which file and why."""


def load_sources(root: str | Path) -> list[Source]:
    """Every ``<role>/<source>/SOURCE.yaml`` folder under ``root`` (roles ``eval`` and ``benign``)."""
    root = Path(root)
    out = []
    for role in ("eval", "benign"):
        for meta_path in sorted((root / role).glob("*/SOURCE.yaml")):
            out.append(_load_source(meta_path, role))
    if not out:
        raise EvaluationError(f"{root}: no eval/*/SOURCE.yaml or benign/*/SOURCE.yaml found")
    return out


def _load_source(meta_path: Path, role: str) -> Source:
    meta = yaml.safe_load(meta_path.read_text(encoding="utf-8")) or {}
    if not isinstance(meta, dict) or meta.get("produced_by") not in PRODUCERS or \
            not isinstance(meta.get("tuned_on"), bool):
        raise EvaluationError(f"{meta_path}: needs 'produced_by' ({' | '.join(PRODUCERS)}) and 'tuned_on' (bool)")
    folder = meta_path.parent
    files = [folder / meta["file"]] if meta.get("file") else sorted(folder.glob("*.jsonl"))
    split = meta.get("split")
    sets = []
    for path in files:
        with open_text(path) as fh:
            rows = tuple(row for _, row in iter_jsonl(fh, str(path)) if not split or row.get("split") == split)
        sets.append((path.stem, rows))
    return Source(str(meta.get("source", folder.name)), role, meta["produced_by"], meta["tuned_on"],
                  " ".join(str(meta.get("description", "")).split()), tuple(sets))


def row_prompt(row: dict[str, Any]) -> Prompt:
    """The prompt of an evaluation row, through the event contract's own parser."""
    if "messages" in row:
        return parse_prompt({"messages": row["messages"]}, Limits())
    return Prompt(system=row.get("system_prompt") or None, user=(str(row.get("prompt") or row.get("text") or ""),))


def evaluate(detector: Detects, sources: Iterable[Source], *, batch: int = 64) -> list[SourceResult]:
    results = []
    for source in sources:
        res = SourceResult(source)
        for set_name, rows in source.sets:
            for start in range(0, len(rows), batch):
                chunk = rows[start:start + batch]
                verdicts = detector.detect_many([row_prompt(r) for r in chunk])
                for row, v in zip(chunk, verdicts, strict=True):
                    _score(res, set_name, row, v)
        results.append(res)
    return results


def _score(res: SourceResult, set_name: str, row: dict[str, Any], v: FramingResult) -> None:
    kind = row.get("kind") if res.source.role == "eval" else "benign"
    flagged = v.framing != "none"
    if kind in POSITIVE_KINDS:
        cluster = str(row["cluster"])
        hit = flagged and v.cluster == cluster and (kind != "exact" or v.framing == "exact")
        counts = res.positives.setdefault(cluster, [0, 0])
        counts[0] += hit
        counts[1] += 1
        if kind == "exact":
            res.exact[0] += hit
            res.exact[1] += 1
        ok = hit
    elif kind == "lookalike":
        res.lookalikes[0] += flagged
        res.lookalikes[1] += 1
        ok = not flagged
    else:
        res.benign[0] += flagged
        res.benign[1] += 1
        ok = not flagged
    if not ok:
        res.errors.append({"set": set_name, "id": row.get("id"), "kind": kind, "cluster": row.get("cluster"),
                           "got": v.framing, "got_cluster": v.cluster, "score": v.similarity, "segment": v.segment})


def summary(results: Sequence[SourceResult]) -> dict[str, Any]:
    """Per source, pooled, and the worst source nobody tuned on (the headline)."""
    def rate(found: int, total: int) -> float | None:
        return round(found / total, 4) if total else None

    per_source = {}
    pooled: dict[str, list[int]] = {}
    worst_recall: dict[str, tuple[float, str]] = {}
    worst_look: tuple[float, str] | None = None
    benign_rates: dict[str, float | None] = {}
    for r in results:
        s = r.source
        per_source[s.name] = {
            "role": s.role, "produced_by": s.produced_by, "tuned_on": s.tuned_on,
            "recall": {c: {"found": f, "total": n, "rate": rate(f, n)} for c, (f, n) in sorted(r.positives.items())},
            "exact": {"found": r.exact[0], "total": r.exact[1]},
            "lookalikes_flagged": {"flagged": r.lookalikes[0], "total": r.lookalikes[1],
                                   "rate": rate(*r.lookalikes)},
            "benign_flagged": {"flagged": r.benign[0], "total": r.benign[1], "rate": rate(*r.benign)},
        }
        for c, (f, n) in r.positives.items():
            p = pooled.setdefault(c, [0, 0])
            p[0] += f
            p[1] += n
            if not s.tuned_on and n:
                cur = worst_recall.get(c)
                if cur is None or f / n < cur[0]:
                    worst_recall[c] = (f / n, s.name)
        if not s.tuned_on and r.lookalikes[1]:
            lr = r.lookalikes[0] / r.lookalikes[1]
            if worst_look is None or lr > worst_look[0]:
                worst_look = (lr, s.name)
        if r.benign[1]:
            benign_rates[s.name] = rate(*r.benign)
    exact = [sum(r.exact[0] for r in results), sum(r.exact[1] for r in results)]
    return {
        "sources": per_source,
        "pooled_recall": {c: {"found": f, "total": n, "rate": rate(f, n)} for c, (f, n) in sorted(pooled.items())},
        "worst_untuned_recall": {c: {"rate": round(v, 4), "source": src}
                                 for c, (v, src) in sorted(worst_recall.items())},
        "worst_untuned_lookalikes": None if worst_look is None else {"rate": round(worst_look[0], 4),
                                                                     "source": worst_look[1]},
        "exact": {"found": exact[0], "total": exact[1]},
        "benign_flagged": benign_rates,
    }


def format_table(summary_: dict[str, Any]) -> str:
    """Markdown tables: recall per cluster per source, look-alike and benign rates, worst untuned source."""
    sources = summary_["sources"]
    clusters = sorted({c for s in sources.values() for c in s["recall"]})
    lines = ["| source | by | tuned on | " + " | ".join(clusters) + " | look-alikes |",
             "|---|---|---|" + "---|" * len(clusters) + "---|"]
    for name, s in sources.items():
        if s["role"] != "eval":
            continue
        cells = []
        for c in clusters:
            rc = s["recall"].get(c)
            cells.append(f"{rc['rate']:.2f} ({rc['found']}/{rc['total']})" if rc else "–")
        la = s["lookalikes_flagged"]
        look = f"{la['rate']:.1%} ({la['flagged']}/{la['total']})" if la["total"] else "–"
        lines.append(f"| {name} | {s['produced_by']} | {'yes' if s['tuned_on'] else 'no'} | " + " | ".join(cells)
                     + f" | {look} |")
    worst = summary_["worst_untuned_recall"]
    lines.append("| **worst untuned source** | | | " + " | ".join(
        f"**{worst[c]['rate']:.2f}** ({worst[c]['source']})" if c in worst else "–" for c in clusters) + " | " + (
        f"**{summary_['worst_untuned_lookalikes']['rate']:.1%}** ({summary_['worst_untuned_lookalikes']['source']})"
        if summary_["worst_untuned_lookalikes"] else "–") + " |")
    pooled = summary_["pooled_recall"]
    lines.append("| pooled (all sources) | | | " + " | ".join(
        f"{pooled[c]['rate']:.2f}" if c in pooled else "–" for c in clusters) + " | |")
    lines += ["", "| benign source | by | tuned on | flagged |", "|---|---|---|---|"]
    for name, s in sources.items():
        b = s["benign_flagged"]
        if s["role"] == "benign":
            lines.append(f"| {name} | {s['produced_by']} | {'yes' if s['tuned_on'] else 'no'} | "
                         f"{b['rate']:.2%} ({b['flagged']}/{b['total']}) |")
    ex = summary_["exact"]
    lines.append(f"\nexact phrases: {ex['found']}/{ex['total']}")
    return "\n".join(lines)


def timed_evaluate(detector: Detects, sources: Sequence[Source]) -> tuple[list[SourceResult], float]:
    start = time.perf_counter()
    results = evaluate(detector, sources)
    return results, time.perf_counter() - start
