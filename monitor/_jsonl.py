"""Reading JSON Lines input files: one object a line, gzip by suffix, errors that name ``file:line``.

Shared by the offline commands (score, gate, train-classifier) so that a bad line reads the same everywhere.
"""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class JsonlError(ValueError):
    """A line that is not valid JSON; the message starts with ``file:line``."""


def open_text(path: str | Path) -> IO[str]:
    """Open ``path`` for reading text: ``-`` is stdin, a ``.gz`` suffix is decompressed."""
    if str(path) == "-":
        return sys.stdin
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")  # noqa: SIM115 - the caller closes it


def iter_jsonl(fh: IO[str], name: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, obj)`` per non-blank line, ``where`` being ``name:lineno`` for the caller's errors."""
    for lineno, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            yield f"{name}:{lineno}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise JsonlError(f"{name}:{lineno}: not valid JSON ({exc.msg})") from None
