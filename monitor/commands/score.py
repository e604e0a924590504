"""``framewatch score --input IN.jsonl --output OUT.jsonl``: misalignment score per response.

Input lines are ``{"id": ..., "response": str}`` (``"prompt"`` is allowed and ignored: the classifier
judges the response alone). Output lines are ``{"id", "misalignment_score", "misaligned"}`` in input order.
The whole input is validated before anything is written, so a bad line never leaves a half-written output.
Exit codes: 0 scored, 2 bad input / missing classifier.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from monitor._io import JsonlError, iter_jsonl, open_text, progress


class InputError(ValueError):
    """A line of the input is not ``{"id": ..., "response": str}``; the message names the line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="IN.jsonl",
                        help='JSONL(.gz) of {"id": ..., "response": str}; "-" for stdin')
    parser.add_argument("--output", required=True, metavar="OUT.jsonl", help='output JSONL; "-" for stdout')
    parser.add_argument("--classifier", metavar="DIR",
                        help="classifier directory (default: settings classifier_dir, else models/classifier/)")
    parser.add_argument("--prefix-chars", type=int, default=None,
                        help="characters of each response scored (default: settings response_prefix_chars)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="override the classifier's operating threshold for the misaligned flag")
    parser.add_argument("--batch-size", type=int, default=512, help="responses per scoring batch (default 512)")


def read_input(fh: IO[str], name: str) -> tuple[list[Any], list[str]]:
    """(ids, responses); raises :class:`InputError` naming the first bad line. Blank lines are skipped."""
    ids: list[Any] = []
    responses: list[str] = []
    try:
        lines = list(iter_jsonl(fh, name))
    except JsonlError as exc:
        raise InputError(str(exc)) from None
    for where, obj in lines:
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if "id" not in obj:
            raise InputError(f"{where}: missing \"id\"")
        if not isinstance(obj.get("response"), str):
            raise InputError(f"{where}: \"response\" must be a string")
        if "prompt" in obj and obj["prompt"] is not None and not isinstance(obj["prompt"], str):
            raise InputError(f"{where}: \"prompt\" must be a string when given")
        ids.append(obj["id"])
        responses.append(obj["response"])
    return ids, responses


def _batches(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def run(args: argparse.Namespace) -> int:
    from monitor.scoring.scorer import ClassifierError, ResponseScorer
    from monitor.settings import Settings, SettingsError

    def fail(msg: str) -> int:
        print(f"framewatch score: error: {msg}", file=sys.stderr)
        return 2

    if args.batch_size < 1:
        return fail("--batch-size must be >= 1")
    try:
        settings = Settings.load()
    except SettingsError as exc:
        return fail(str(exc))
    try:
        with open_text(args.input) as fh:
            ids, responses = read_input(fh, "<stdin>" if args.input == "-" else args.input)
    except InputError as exc:
        return fail(str(exc))
    except (OSError, UnicodeDecodeError) as exc:
        return fail(f"cannot read {args.input}: {exc}")
    try:
        scorer = ResponseScorer.load(args.classifier or settings.classifier_dir, prefix_chars=(
            args.prefix_chars if args.prefix_chars is not None else settings.response_prefix_chars))
    except (ClassifierError, OSError, KeyError, ValueError) as exc:
        return fail(f"cannot load classifier: {exc}")
    threshold = scorer.threshold if args.threshold is None else args.threshold

    spans = list(_batches(len(responses), args.batch_size))
    try:
        with contextlib.ExitStack() as stack:
            out: IO[str] = sys.stdout if args.output == "-" else stack.enter_context(
                open(Path(args.output), "w", encoding="utf-8"))
            for start, end in progress(spans, total=len(responses), desc="scoring",
                                       size=lambda span: span[1] - span[0]):
                scores = scorer.score(responses[start:end])
                out.write("".join(
                    json.dumps({"id": i, "misalignment_score": round(float(s), 6),
                                "misaligned": bool(s >= threshold)}) + "\n"
                    for i, s in zip(ids[start:end], scores, strict=True)))
    except OSError as exc:
        return fail(f"cannot write {args.output}: {exc}")
    return 0
