"""File plumbing of the offline commands: JSON Lines and YAML input, file digests, a terminal progress bar.

One owner each, so a bad input line, a checksum and a progress line read the same in every command:
JSON Lines are one object a line, gzip by suffix, errors that name ``file:line``; a YAML file that cannot be
read says so in one wording, raised as the caller's own error; the progress bar is drawn on stderr only when
it is a terminal (piped output and CI logs stay clean), at most ~10 times a second.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import yaml

T = TypeVar("T")


class JsonlError(ValueError):
    """A line that is not valid JSON; the message starts with ``file:line``."""


def open_text(path: str | Path) -> IO[str]:
    """Open ``path`` for reading text: ``-`` is stdin, a ``.gz`` suffix is decompressed."""
    if str(path) == "-":
        return sys.stdin
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")  # noqa: SIM115 - the caller closes it


def iter_json_lines(fh: IO[str], name: str, *, on_invalid: Callable[[int], None] | None = None
                    ) -> Iterator[tuple[int, Any]]:
    """Yield ``(lineno, obj)`` (1-based) per non-blank line.

    A line that is not JSON raises :class:`JsonlError`, or, when ``on_invalid`` is given, is passed to it by
    number and skipped (the audit counts such rows of a scraped data set instead of refusing the whole set).
    """
    for lineno, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if on_invalid is None:
                raise JsonlError(f"{name}:{lineno}: not valid JSON ({exc.msg})") from None
            on_invalid(lineno)
            continue
        yield lineno, obj


def iter_jsonl(fh: IO[str], name: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, obj)`` per non-blank line, ``where`` being ``name:lineno`` for the caller's errors."""
    for lineno, obj in iter_json_lines(fh, name):
        yield f"{name}:{lineno}", obj


def read_yaml(path: Path, what: str, error: Callable[[str], Exception]) -> Any:
    """``path`` parsed as YAML (``None`` when empty). When it cannot be read or parsed, ``error`` is raised with
    ``cannot read <what> <path>: <why>``: the caller's own exception type (the gate's exits 2, the settings' stops
    the start), one wording for every YAML input."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from exc


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (model files are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Progress(Protocol):
    """How the library modules report long loops: :func:`progress` in a terminal, :func:`no_progress` otherwise."""

    def __call__(self, iterable: Iterable[T], total: int | None = ..., desc: str = ...) -> Iterable[T]: ...


def no_progress(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
    """The silent :class:`Progress`: library calls default to it, commands pass :func:`progress`."""
    return iterable


_WIDTH = 30
_INTERVAL = 0.1


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _line(desc: str, done: int, total: int | None, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    prefix = f"{desc}: " if desc else ""
    if total:
        frac = min(1.0, done / total)
        filled = int(frac * _WIDTH)
        eta = (total - done) / rate if rate > 0 else 0.0
        return (f"{prefix}{frac * 100:3.0f}% |{'#' * filled}{'.' * (_WIDTH - filled)}| {done}/{total} "
                f"[{_fmt_time(elapsed)}<{_fmt_time(eta)}, {rate:.1f}/s]")
    return f"{prefix}{done} [{_fmt_time(elapsed)}, {rate:.1f}/s]"


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "",
             stream: IO[str] | None = None, force: bool = False,
             size: Callable[[T], int] | None = None) -> Iterator[T]:
    """Yield from ``iterable``, drawing a one-line bar on stderr when it is a terminal.

    ``total`` defaults to ``len(iterable)`` when it has one. ``size`` counts an item as that many units
    (e.g. a batch as its number of responses, with ``total`` in responses), so the bar and rate speak
    the user's units. ``force`` draws even when not a terminal (for tests).
    """
    out = stream if stream is not None else sys.stderr
    if not force and not (hasattr(out, "isatty") and out.isatty()):
        yield from iterable
        return
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    start = last = time.monotonic()
    done = 0
    out.write("\r" + _line(desc, 0, total, 0.0))
    out.flush()
    try:
        for item in iterable:
            yield item
            done += size(item) if size is not None else 1
            now = time.monotonic()
            if now - last >= _INTERVAL:
                last = now
                out.write("\r" + _line(desc, done, total, now - start))
                out.flush()
    finally:
        out.write("\r" + _line(desc, done, total, time.monotonic() - start) + "\n")
        out.flush()
