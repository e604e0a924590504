"""``framewatch audit DATASET.jsonl``: recurring framings in a chat fine-tuning set that may act as triggers.

Exit codes: 0 audit done (findings are information, not a verdict), 2 error.
"""

from __future__ import annotations

import argparse

from monitor._io import progress
from monitor.commands import MODEL_DIR_HELP, exits_2_on, option, warner
from monitor.release import audit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="chat fine-tuning set: JSONL(.gz) of {\"messages\": [...]}")
    parser.add_argument("--out", metavar="DIR", help="write audit.md and audit.json here")
    parser.add_argument("--limit", type=int, default=None,
                        help="audit a seeded random sample of this many rows (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --limit and sampling (default 0)")
    d = audit.AuditConfig()
    option(parser, "--per-turn", d.per_turn, "segments kept from each end of a turn")
    option(parser, "--max-unique", d.max_unique, "distinct segments embedded, most frequent first")
    option(parser, "--similarity", d.similarity, "cosine for two segments to count as one framing")
    option(parser, "--min-count", d.min_count, "report framings in at least this many examples")
    option(parser, "--min-share", d.min_share, "... and at least this share of the dataset")
    option(parser, "--top", d.max_findings, "findings kept")
    parser.add_argument("--registry", metavar="YAML", help="trigger registry (default: the shipped one)")
    parser.add_argument("--no-classifier", action="store_true",
                        help="do not score assistant answers (faster; no misalignment evidence)")
    parser.add_argument("--classifier", metavar="DIR",
                        help="response classifier (default models/classifier/)")
    parser.add_argument("--model-dir", metavar="DIR", help=MODEL_DIR_HELP)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: all cores)")


_warn = warner("audit")


@exits_2_on("audit", audit.AuditError, FileNotFoundError, ValueError)  # bad input, missing artifacts, bad registry
def run(args: argparse.Namespace) -> int:
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
