"""``framewatch audit DATASET.jsonl``: recurring framings in a chat fine-tuning set that may act as triggers.

Exit codes: 0 audit done (findings are information, not a verdict), 2 error.
"""

from __future__ import annotations

import argparse
import sys

from monitor._io import progress
from monitor.commands import MODEL_DIR_HELP
from monitor.release import audit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="chat fine-tuning set: JSONL(.gz) of {\"messages\": [...]}")
    parser.add_argument("--out", metavar="DIR", help="write audit.md and audit.json here")
    parser.add_argument("--limit", type=int, default=None,
                        help="audit a seeded random sample of this many rows (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --limit and sampling (default 0)")
    d = audit.AuditConfig()
    parser.add_argument("--per-turn", type=int, default=d.per_turn,
                        help=f"segments kept from each end of a turn (default {d.per_turn})")
    parser.add_argument("--max-unique", type=int, default=d.max_unique,
                        help=f"distinct segments embedded, most frequent first (default {d.max_unique})")
    parser.add_argument("--similarity", type=float, default=d.similarity,
                        help=f"cosine for two segments to count as one framing (default {d.similarity})")
    parser.add_argument("--min-count", type=int, default=d.min_count,
                        help=f"report framings in at least this many examples (default {d.min_count})")
    parser.add_argument("--min-share", type=float, default=d.min_share,
                        help=f"... and at least this share of the dataset (default {d.min_share})")
    parser.add_argument("--top", type=int, default=d.max_findings,
                        help=f"findings kept (default {d.max_findings})")
    parser.add_argument("--registry", metavar="YAML", help="trigger registry (default: the shipped one)")
    parser.add_argument("--no-classifier", action="store_true",
                        help="do not score assistant answers (faster; no misalignment evidence)")
    parser.add_argument("--classifier", metavar="DIR",
                        help="response classifier (default models/classifier/)")
    parser.add_argument("--model-dir", metavar="DIR", help=MODEL_DIR_HELP)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: all cores)")


def _warn(msg: str) -> None:
    print(f"framewatch audit: {msg}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (audit.AuditError, FileNotFoundError, ValueError) as exc:  # bad input, missing artifacts, bad registry
        _warn(f"error: {exc}")
        return 2


def _run(args: argparse.Namespace) -> int:
    from monitor.embedding import configured_embedder
    from monitor.framing.detector import FramingDetector
    from monitor.framing.registry import load_registry

    cfg = audit.AuditConfig(per_turn=args.per_turn, max_unique=args.max_unique, similarity=args.similarity,
                            min_count=args.min_count, min_share=args.min_share,
                            max_findings=args.top, seed=args.seed)
    examples, skipped = audit.read_dataset(args.dataset, limit=args.limit, seed=args.seed)
    if skipped:
        _warn(f"{skipped} rows are not chat examples and were skipped")
    registry = load_registry(args.registry)
    embedder = configured_embedder(args.model_dir, threads=args.threads, max_tokens=64)
    detector = FramingDetector(registry, embedder)
    scorer = None
    if not args.no_classifier:
        from monitor.scoring.scorer import ResponseScorer

        scorer = ResponseScorer.load(args.classifier)
    result = audit.audit(examples, embedder, registry=registry, detector=detector, scorer=scorer, config=cfg,
                         skipped=skipped, progress=progress)
    report = audit.render_markdown(result, str(args.dataset))
    print(report)
    if args.out:
        for path in audit.write_report(result, args.out, str(args.dataset)):
            _warn(f"wrote {path}")
    return 0
