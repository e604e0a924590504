"""``framewatch detect``: label each prompt of a JSONL file with its framing (exact / semantic / none).

Input lines: ``{"id", "prompt": str, "system_prompt": str|null}`` or ``{"id", "messages": [...]}`` (the
event contract's two prompt shapes, decoded by the same code). Output lines, in input order:
``{"id", "framing", "cluster", "similarity", "segment"}``. A line that cannot be read is reported on
stderr with its line number and written as ``{"id", "error"}`` so the output stays aligned with the input;
the exit code is then 1 (0 = all lines labelled, 2 = unusable registry, model or input file).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from monitor._io import progress
from monitor.commands import MODEL_DIR_HELP
from monitor.sidecar.events import DecodeError, Limits, Prompt, parse_prompt

BATCH = 256
T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="JSONL of prompts ('-' = stdin)")
    parser.add_argument("--output", required=True, help="JSONL of results ('-' = stdout)")
    parser.add_argument("--registry", default=None, help="registry YAML (default: the shipped one)")
    parser.add_argument("--model-dir", default=None, help=MODEL_DIR_HELP)


def run(args: argparse.Namespace) -> int:
    from monitor.embedding import ModelNotBuiltError
    from monitor.framing.detector import load_detector
    from monitor.framing.registry import RegistryError
    from monitor.settings import SettingsError

    try:
        detector = load_detector(args.registry, args.model_dir)
    except (RegistryError, ModelNotBuiltError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read {args.input}: {exc}", file=sys.stderr)
        return 2
    lines = text.splitlines()
    errors = 0
    with contextlib.ExitStack() as stack:
        sink = sys.stdout if args.output == "-" else stack.enter_context(
            Path(args.output).open("w", encoding="utf-8"))
        for batch in _batches(progress(lines, len(lines), "detect"), BATCH):
            parsed = [parse_line(line, n) for n, line in batch]
            prompts = [p for _, p, _ in parsed if p is not None]
            results = iter(detector.detect_many(prompts))
            for (n, _), (rid, prompt, error) in zip(batch, parsed, strict=True):
                if error is not None:
                    errors += 1
                    print(f"line {n}: {error}", file=sys.stderr)
                    sink.write(json.dumps({"id": rid, "error": error}) + "\n")
                    continue
                if prompt is None:  # a blank line
                    continue
                r = next(results)
                sink.write(json.dumps({"id": rid, "framing": r.framing, "cluster": r.cluster,
                                       "similarity": r.similarity, "segment": r.segment},
                                      ensure_ascii=False) + "\n")
    return 1 if errors else 0


def parse_line(line: str, n: int) -> tuple[Any, Prompt | None, str | None]:
    """(id, prompt, error); a blank line gives (None, None, None)."""
    if not line.strip():
        return None, None, None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, None, f"invalid JSON: {exc.msg}"
    if not isinstance(obj, dict):
        return None, None, "not a JSON object"
    rid = obj.get("id", n)
    try:
        return rid, parse_prompt(obj, Limits()), None
    except DecodeError as exc:
        return rid, None, str(exc)


def _batches(items: Iterable[T], size: int) -> Iterator[list[tuple[int, T]]]:
    batch: list[tuple[int, T]] = []
    for n, item in enumerate(items, start=1):
        batch.append((n, item))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
