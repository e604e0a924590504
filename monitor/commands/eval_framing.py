"""``framewatch eval-framing``: framing recall, look-alike and benign rates *per source* (monitor.framing.evaluation).

The headline is the worst source nobody tuned on, per cluster. Exit codes: 0 measured, 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
import sys

from monitor.commands import MODEL_DIR_HELP
from monitor.settings import REPO_DIR

DEFAULT_DATA = REPO_DIR / "data" / "framing"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="folder with eval/<source>/ and benign/<source>/, each with a SOURCE.yaml "
                             "(default: %(default)s)")
    parser.add_argument("--source", action="append", default=[],
                        help="only these sources (repeatable; default: all)")
    parser.add_argument("--registry", default=None, help="registry YAML (default: the shipped one)")
    parser.add_argument("--model-dir", default=None, help=MODEL_DIR_HELP)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--show-errors", action="store_true", help="list missed positives and false alarms")


def run(args: argparse.Namespace) -> int:
    from monitor.embedding import ModelNotBuiltError
    from monitor.framing.detector import load_detector
    from monitor.framing.evaluation import EvaluationError, format_table, load_sources, summary, timed_evaluate
    from monitor.framing.registry import RegistryError
    from monitor.settings import SettingsError

    try:
        sources = load_sources(args.data)
        if args.source:
            unknown = set(args.source) - {s.name for s in sources}
            if unknown:
                raise EvaluationError(f"unknown source(s): {', '.join(sorted(unknown))}")
            sources = [s for s in sources if s.name in args.source]
        detector = load_detector(args.registry, args.model_dir)
    except (EvaluationError, RegistryError, ModelNotBuiltError, SettingsError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results, seconds = timed_evaluate(detector, sources)
    report = summary(results)
    prompts = sum(len(rows) for s in sources for _, rows in s.sets)
    report["prompts"] = prompts
    report["seconds"] = round(seconds, 1)
    report["segments_embedded_per_prompt"] = round(detector.segments_embedded / max(1, prompts), 3)
    if args.json:
        if args.show_errors:
            report["errors"] = {r.source.name: r.errors for r in results}
        print(json.dumps(report, indent=2))
        return 0
    print(format_table(report))
    print(f"{prompts} prompts in {seconds:.1f}s; {report['segments_embedded_per_prompt']} segments embedded per prompt")
    if args.show_errors:
        for r in results:
            for e in r.errors:
                print(f"  [{r.source.name}/{e['set']}] {e['id']} {e['kind']} {e['cluster']}: got {e['got']}/"
                      f"{e['got_cluster']} {e['score']:.3f} seg={e['segment']!r}")
    return 0
