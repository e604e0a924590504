"""``framewatch eval-framing``: recall per cluster, benign FPR and look-alike FPR of the detector.

Two sets: ``data/framing_eval.jsonl`` (hand-written paraphrases placed inside longer prompts, exact
phrases, look-alikes that share a trigger's words but not its meaning; never used for training) and the
*evaluation* half of ``data/benign_prompts.jsonl`` (the calibration half set the thresholds, so measuring
FPR on it would flatter the detector).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from monitor.commands import MODEL_DIR_HELP
from monitor.settings import REPO_DIR

DEFAULT_EVAL = REPO_DIR / "data" / "framing_eval.jsonl"
DEFAULT_BENIGN = REPO_DIR / "data" / "benign_prompts.jsonl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", default=None, help="registry YAML (default: the shipped one)")
    parser.add_argument("--eval", default=str(DEFAULT_EVAL), help="labelled framing set (JSONL)")
    parser.add_argument("--benign", default=str(DEFAULT_BENIGN), help="benign prompts (JSONL)")
    parser.add_argument("--split", default="evaluation", help="benign rows with this 'split' ('' = all)")
    parser.add_argument("--model-dir", default=None, help=MODEL_DIR_HELP)
    parser.add_argument("--no-prefilter", action="store_true",
                        help="embed every segment (measures what the static prefilter costs in recall)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--show-errors", action="store_true", help="list missed paraphrases and false alarms")


def run(args: argparse.Namespace) -> int:
    from monitor.embedding import ModelNotBuiltError
    from monitor.framing.detector import load_detector
    from monitor.framing.registry import RegistryError
    from monitor.settings import SettingsError

    try:
        detector = load_detector(args.registry, args.model_dir, prefilter=not args.no_prefilter)
    except (RegistryError, ModelNotBuiltError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = evaluate(detector, Path(args.eval), Path(args.benign), args.split or None)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report, show_errors=args.show_errors))
    return 0


def evaluate(detector: Any, eval_path: Path, benign_path: Path, split: str | None) -> dict[str, Any]:
    from monitor.commands.calibrate import read_benign
    from monitor.sidecar.events import Prompt

    rows = [json.loads(line) for line in eval_path.read_text().splitlines() if line.strip()]
    prompts = [Prompt(system=r.get("system_prompt") or None, user=(r["prompt"],)) for r in rows]
    t0 = time.perf_counter()
    results = detector.detect_many(prompts)
    by: dict[tuple[str, str], list[bool]] = defaultdict(list)
    errors: list[dict[str, Any]] = []
    for row, res in zip(rows, results, strict=True):
        if row["kind"] in ("paraphrase", "exact"):
            ok = res.cluster == row["cluster"] and (row["kind"] != "exact" or res.framing == "exact")
        else:  # lookalike: any flag is a false alarm
            ok = res.framing == "none"
        by[(row["kind"], row["cluster"])].append(ok)
        if not ok:
            errors.append({"id": row["id"], "expected": row["cluster"] if row["kind"] != "lookalike" else None,
                           "got": res.cluster, "framing": res.framing, "similarity": res.similarity,
                           "segment": res.segment, "text": (row.get("system_prompt") or "") + " | " + row["prompt"]})
    benign = read_benign(benign_path, split)
    benign_results = detector.detect_many([Prompt(system=s or None, user=(u,)) for s, u in benign])
    elapsed = time.perf_counter() - t0
    flagged = [(u, r) for (_, u), r in zip(benign, benign_results, strict=True) if r.framing != "none"]
    for u, r in flagged:
        errors.append({"id": "benign", "expected": None, "got": r.cluster, "framing": r.framing,
                       "similarity": r.similarity, "segment": r.segment, "text": u[:200]})
    clusters = sorted({c for _, c in by})
    report: dict[str, Any] = {"clusters": {}, "eval_rows": len(rows), "benign_prompts": len(benign),
                              "benign_fpr": len(flagged) / max(1, len(benign)), "seconds": round(elapsed, 2)}
    lookalike_all: list[bool] = []
    for c in clusters:
        entry = {}
        for kind in ("paraphrase", "exact", "lookalike"):
            oks = by.get((kind, c), [])
            if oks:
                rate = sum(oks) / len(oks)
                entry[kind] = {"n": len(oks), "rate": rate if kind != "lookalike" else 1 - rate}
        lookalike_all += by.get(("lookalike", c), [])
        report["clusters"][c] = entry
    report["lookalike_fpr"] = 1 - sum(lookalike_all) / max(1, len(lookalike_all))
    report["lookalike_n"] = len(lookalike_all)
    report["errors"] = errors
    return report


def format_report(report: dict[str, Any], *, show_errors: bool = False) -> str:
    lines = [f"{'cluster':24} {'paraphrase recall':>18} {'exact recall':>13} {'look-alike FPR':>15}"]
    for c, e in report["clusters"].items():
        cells = []
        for kind in ("paraphrase", "exact", "lookalike"):
            cells.append(f"{e[kind]['rate']:.2f} (n={e[kind]['n']})" if kind in e else "-")
        lines.append(f"{c:24} {cells[0]:>18} {cells[1]:>13} {cells[2]:>15}")
    lines.append(f"look-alike FPR (all): {report['lookalike_fpr']:.3f} (n={report['lookalike_n']})")
    lines.append(f"benign FPR: {report['benign_fpr']:.4f} (n={report['benign_prompts']})")
    if show_errors:
        lines.append("errors:")
        for e in report["errors"]:
            lines.append(f"  {e['id']}: expected {e['expected']} got {e['got']}/{e['framing']} "
                         f"{e['similarity']:.3f} seg={e['segment']!r} :: {e['text'][:160]!r}")
    return "\n".join(lines)
