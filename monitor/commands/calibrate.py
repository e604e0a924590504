"""``framewatch calibrate``: learn per-cluster scorers and thresholds, write them into the registry.

The method and every measured choice are in :mod:`monitor.framing.calibration`. Exit codes: 0 written,
2 unusable registry, training data or model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from monitor.commands import MODEL_DIR_HELP
from monitor.framing import calibration as cal


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", default=None, help="registry YAML to calibrate (default: the shipped one)")
    parser.add_argument("--benign", default=str(cal.DEFAULT_BENIGN),
                        help="benign reference prompts, JSONL with 'text' (and optional 'system_prompt', 'split')")
    parser.add_argument("--split", default="calibration",
                        help="use only rows whose 'split' equals this ('' = all rows); the rest stay for evaluation")
    parser.add_argument("--templates", default=str(cal.DEFAULT_TEMPLATES), help="variant templates (JSONL)")
    parser.add_argument("--written", default=str(cal.DEFAULT_WRITTEN),
                        help="hand-written training sentences, JSONL with 'cluster', 'label' (1 = carries the "
                             "trigger, 0 = look-alike) and 'text' ('' = none)")
    parser.add_argument("--target-fpr", type=float, default=0.005,
                        help="benign prompts flagged by any cluster, at most (default 0.005 = 0.5%%)")
    parser.add_argument("--min-threshold", type=float, default=cal.MIN_THRESHOLD,
                        help="no cluster threshold below this, unless the cluster sets its own 'min_threshold' "
                             "(keeps look-alikes out; default %(default)s)")
    parser.add_argument("--model-dir", default=None, help=MODEL_DIR_HELP)
    parser.add_argument("--output", default=None, help="write the registry here instead of in place")
    parser.add_argument("--validate", action="store_true",
                        help="also report recall on each generated variation family held out of training")


def run(args: argparse.Namespace) -> int:
    from monitor.embedding import ModelNotBuiltError, configured_embedder
    from monitor.framing.registry import DEFAULT_REGISTRY, RegistryError, load_registry
    from monitor.settings import SettingsError

    path = Path(args.registry) if args.registry else DEFAULT_REGISTRY
    if not 0 < args.target_fpr < 1:
        print("error: --target-fpr must be between 0 and 1", file=sys.stderr)
        return 2
    try:
        registry = load_registry(path, with_model=False)
        embedder = configured_embedder(args.model_dir)
        data = cal.load_training_data(Path(args.templates), Path(args.written) if args.written else None,
                                      Path(args.benign), args.split or None)
    except (RegistryError, ModelNotBuiltError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"error: training sentences: {exc}", file=sys.stderr)
        return 2
    out_path = Path(args.output) if args.output else path
    out_path.parent.mkdir(parents=True, exist_ok=True)
    report = cal.calibrate(registry, embedder, data, target_fpr=args.target_fpr, out_path=out_path,
                           min_threshold=args.min_threshold, static=cal.reusable_static(path),
                           validate=args.validate)
    print(format_report(report))
    return 0


def format_report(report: dict[str, Any]) -> str:
    """The calibration report as the command prints it."""
    lines = [f"calibrated on {report['benign_prompts']} benign prompts, target FPR {report['target_fpr']:.2%}",
             f"{'cluster':24} {'threshold':>9} {'benign FPR':>10} {'positives':>9} {'negatives':>9}"]
    for cid, c in report["clusters"].items():
        lines.append(f"{cid:24} {c['threshold']:9.4f} {c['benign_fpr']:10.3%} {c['positives']:9d} {c['negatives']:9d}")
    lines.append(f"any cluster: benign FPR {report['union_fpr']:.3%} (cross-fitted)")
    lines.append("static prefilter (benign segments passed / training positives passed): " + ", ".join(
        f"{cid} {c['static_pass_rate']:.2%}/{c['static_positive_recall']:.1%}"
        for cid, c in report["clusters"].items()))
    if "held_out_families" in report:
        lines.append("held-out families (recall of a family's fresh sentences when trained without it): " + ", ".join(
            f"{k} {v:.2f}" for k, v in report["held_out_families"].items()))
    lines.append(f"wrote {report['registry']} and {report['model']}")
    return "\n".join(lines)
