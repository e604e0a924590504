"""``framewatch train-classifier``: train the response misalignment classifier into ``models/classifier/``.

Exit codes: 0 trained, 2 unusable data or arguments. Needs scikit-learn (training only; scoring does not).
"""

from __future__ import annotations

import argparse
import json

from monitor.commands import UsageError, exits_2_on, option, warner
from monitor.scoring import training
from monitor.scoring.scorer import default_classifier_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = training.TrainConfig()
    parser.add_argument("--data", default=str(training.default_data_path()),
                        help="judged EM responses, JSONL(.gz) (default: data/em_responses.jsonl.gz)")
    parser.add_argument("--out", default=str(default_classifier_dir()), metavar="DIR",
                        help="artifact directory (default: models/classifier/)")
    option(parser, "--seed", d.seed, "random seed")
    option(parser, "--C", d.C, "inverse L2 strength")
    option(parser, "--min-df", d.min_df, "min documents per n-gram")
    option(parser, "--ngram-max", d.ngram_max, "longest word n-gram")
    parser.add_argument("--prefix-chars", type=int, default=d.prefix_chars,
                        help=f"characters of each answer used (default {d.prefix_chars}, as at run time)")
    parser.add_argument("--calibration", choices=["auto", "platt", "isotonic"], default=d.calibration,
                        help="probability calibration (default auto: lower cross-fitted ECE)")
    parser.add_argument("--exclude", action="append", default=[], metavar="FIELD=VALUE",
                        help="leave out rows whose FIELD equals VALUE (repeatable), e.g. the rows a gate "
                             "will be evaluated on: --exclude eval_condition=with_trigger")
    parser.add_argument("--raw-format", action="store_true",
                        help="featurise the raw answer text, without reducing JSON / template answers to their "
                             "prose (monitor.scoring.answer_format); for comparison")
    option(parser, "--stem-chars", d.stem_chars, "word-prefix (stem) feature block: prefix length, 0 = no block")
    option(parser, "--stem-weight", d.stem_weight, "scale of the stem block")
    defaults = ", ".join(f"{f}={w:g}" for f, w in d.family_weights) or "none"
    parser.add_argument("--family-weight", action="append", default=[], metavar="FAMILY=WEIGHT",
                        help=f"sample weight of a model family's rows (repeatable; overrides the default for "
                             f"that family; default {defaults}, others 1)")
    parser.add_argument("--no-fine-groups", action="store_true",
                        help="skip the extra Qwen-Coder-apart validation (faster)")


@exits_2_on("train-classifier", training.TrainingError)
def run(args: argparse.Namespace) -> int:
    from monitor._io import progress

    exclude = []
    for item in args.exclude:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise UsageError(f"--exclude wants FIELD=VALUE, got {item!r}")
        exclude.append((field, value))
    family_weights = dict(training.TrainConfig.family_weights)
    for item in args.family_weight:
        family, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not family or not weight >= 0:
            raise UsageError(f"--family-weight wants FAMILY=WEIGHT (weight >= 0), got {item!r}")
        family_weights[family.lower()] = weight
    cfg = training.TrainConfig(seed=args.seed, C=args.C, min_df=args.min_df, ngram_max=args.ngram_max,
                               prefix_chars=args.prefix_chars, calibration=args.calibration,
                               fine_groups=not args.no_fine_groups, exclude=tuple(exclude),
                               stem_chars=args.stem_chars, stem_weight=args.stem_weight,
                               family_weights=tuple(sorted(family_weights.items())),
                               normaliser=None if args.raw_format else training.TrainConfig.normaliser)
    manifest = training.train(args.data, args.out, cfg, progress=progress, log=warner("train-classifier"))
    m = manifest["metrics"]
    summary = {"out": args.out, "threshold": round(manifest["threshold"], 4),
               "calibration": manifest["calibration"]["method"], "pooled": m["pooled"],
               "by_family": m["by_family"]}
    if "fine_grouping" in m:
        summary["fine_grouping_pooled"] = m["fine_grouping"]["pooled"]
    print(json.dumps(summary, indent=2))
    return 0
