"""One module per ``framewatch`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``.

The helpers below are the few things every offline command does the same way, so they are written once: an
option whose help states the library's default, messages on stderr prefixed with the command's name, and exit
code 2 (with the message, no traceback) for the errors that mean "bad input", never for a bug.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

# The offline commands embed with the sidecar's model (monitor.embedding.configured_embedder).
MODEL_DIR_HELP = ("embedding model folder (default: $FRAMEWATCH_MODEL_DIR, else models/minilm); the file in it is "
                  "$FRAMEWATCH_EMBEDDING_ONNX_FILE, default model.int8.onnx")

Run = Callable[[argparse.Namespace], int]


class UsageError(ValueError):
    """A flag's value the command cannot use (``--exclude x``): exit 2 with the message."""


def option(parser: argparse.ArgumentParser, flag: str, default: float, help: str) -> None:
    """``flag`` typed like ``default`` (int or float), which comes from the library's config dataclass and is
    stated at the end of the help: the help then cannot disagree with the default the library uses."""
    parser.add_argument(flag, type=type(default), default=default, help=f"{help} (default {default})")


def warner(command: str) -> Callable[[str], None]:
    """``warn(msg)`` printing ``framewatch <command>: <msg>`` on stderr, where progress and errors go (stdout is
    the command's result)."""
    def warn(msg: str) -> None:
        print(f"framewatch {command}: {msg}", file=sys.stderr)
    return warn


def exits_2_on(command: str, *errors: type[BaseException]) -> Callable[[Run], Run]:
    """Decorate a command's ``run``: ``errors`` (and :class:`UsageError`) print ``framewatch <command>: error: ...``
    and return 2; the command's own exit codes (0, and the gate's 1) pass through, other exceptions propagate."""
    warn = warner(command)
    caught: tuple[type[BaseException], ...] = (UsageError, *errors)

    def decorate(run: Run) -> Run:
        @functools.wraps(run)
        def guarded(args: argparse.Namespace) -> int:
            try:
                return run(args)
            except caught as exc:
                warn(f"error: {exc}")
                return 2
        return guarded
    return decorate
