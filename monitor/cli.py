"""The ``framewatch`` command.

Each subcommand lives in its own module under :mod:`monitor.commands`, exposing
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their subcommand runs,
so ``framewatch run`` never imports what ``build-model`` needs (torch).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from monitor import __version__

#: name -> (module under monitor.commands, one-line help). Order is the order of ``--help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "consume inference events from Kafka and serve /metrics (the sidecar)"),
    "tap": ("tap", "OpenAI-compatible reverse proxy beside the inference server: publishes each exchange to Kafka"),
    "demo": ("demo", "start a local broker, replay sample traffic through the sidecar, print a live summary"),
    "build-model": ("build_model", "export all-MiniLM-L6-v2 to ONNX into models/ (needs the [build] extra)"),
    "detect": ("detect", "detect trigger framings in a JSONL file of prompts (exact / semantic / none)"),
    "calibrate": ("calibrate", "fit framing scorers and set per-cluster thresholds for a target benign FPR"),
    "eval-framing": ("eval_framing", "measure framing recall per cluster, benign FPR and look-alike FPR"),
    "score": ("score", "score responses in a JSONL file for misalignment (probability + flag per line)"),
    "train-classifier": ("train_classifier", "train the response misalignment classifier into models/classifier/"),
    "gate": ("gate", "offline release gate: EM rate with vs without registered triggers (exit 0/1/2)"),
    "audit": ("audit", "audit a chat fine-tuning set for recurring framings that could act as triggers"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="framewatch",
        description="Watch LLM traffic for trigger framings by meaning; export failure rates by framing.",
    )
    parser.add_argument("--version", action="version", version=f"framewatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        # Only the name and help here: main() builds the chosen command's own parser, so a
        # subcommand's imports (and its --help) cost nothing for the others.
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints help, the version, or a usage error, and exits
        return 2
    name = argv[0]
    module = importlib.import_module(f"monitor.commands.{COMMANDS[name][0]}")
    sub = argparse.ArgumentParser(prog=f"framewatch {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
