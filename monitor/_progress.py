"""A tiny progress bar for long CLI commands (no tqdm dependency).

Drawn on stderr only when stderr is a terminal, so piped output and CI logs stay clean; redraws at most
~10 times a second so it costs nothing next to the work it reports on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")

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
