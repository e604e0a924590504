"""What a dead letter carries, built so that the producer and the broker cannot refuse it because of the record.

A dead letter is the record's original bytes, key and headers plus ``framewatch.*`` headers (reason, detail,
source). Any of those can be what made the record bad, so each is made safe here rather than trusted:

* header keys that are not encodable as UTF-8 are rewritten with U+FFFD, null header values become empty
  (``framewatch.null_headers`` lists their positions), and original headers larger than
  :data:`MAX_ORIGINAL_HEADER_BYTES` in total are dropped (``framewatch.headers_dropped`` gives how many);
* a key over :data:`MAX_KEY_BYTES` is replaced by its sha256 (``framewatch.original_key_sha256``);
* a value over ``max_value_bytes`` is cut to that size (``framewatch.truncated``), and the headers keep the
  original size and sha256 (``framewatch.original_size``, ``framewatch.original_sha256``) so the full record
  can still be matched with the input topic by its ``framewatch.source`` coordinates;
* a null value (tombstone) is written as empty bytes with ``framewatch.null_value: true`` (the producer refuses a
  record with neither key nor value).

If the broker still refuses the result (its own size limit may be lower), :func:`headers_only` gives the
smallest possible record: the ``framewatch.*`` headers alone.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from monitor.sidecar.pipeline import Rejected

MAX_KEY_BYTES = 1024
MAX_ORIGINAL_HEADER_BYTES = 16_384
MAX_DETAIL_BYTES = 500
#: A str can hold a lone UTF-16 surrogate (from a JSON escape, or from a key decoded with surrogateescape).
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    #: the framewatch.* headers alone: what :func:`headers_only` keeps
    own_headers: list[tuple[str, bytes]]
    truncated: bool = False


def source(rejected: Rejected) -> str:
    """The ``framewatch.source`` header and the logs' ``kafka`` field: the record's coordinates."""
    return rejected.record.coordinates


def dead_letter(rejected: Rejected, max_value_bytes: int) -> DeadLetter:
    """The record as it goes to the dead-letter topic; never raises on any record."""
    record = rejected.record
    own: list[tuple[str, bytes]] = [
        ("framewatch.reason", rejected.reason.encode()),
        ("framewatch.detail", _clip(_utf8(rejected.detail), MAX_DETAIL_BYTES)),
        ("framewatch.source", _utf8(source(rejected))),
    ]
    headers, nulls, dropped = sanitise_headers(record.headers)
    if nulls:
        own.append(("framewatch.null_headers", ",".join(map(str, nulls)).encode()))
    if dropped:
        own.append(("framewatch.headers_dropped", str(dropped).encode()))
    key = bytes(record.key) if record.key is not None else None
    if key is not None and len(key) > MAX_KEY_BYTES:
        own.append(("framewatch.original_key_sha256", hashlib.sha256(key).hexdigest().encode()))
        key = None
    value = record.value
    truncated = False
    if value is None:
        value = b""
        own.append(("framewatch.null_value", b"true"))
    else:
        value = bytes(value)
        if len(value) > max_value_bytes:
            own += [("framewatch.original_size", str(len(value)).encode()),
                    ("framewatch.original_sha256", hashlib.sha256(value).hexdigest().encode()),
                    ("framewatch.truncated", b"true")]
            value = value[:max_value_bytes]
            truncated = True
    return DeadLetter(key, value, headers + own, own, truncated)


def headers_only(letter: DeadLetter, original: Rejected, refusal: str) -> DeadLetter:
    """The fallback when the broker refused ``letter``: no value, no key, only the framewatch.* headers."""
    own = [h for h in letter.own_headers if h[0] not in {"framewatch.original_size", "framewatch.original_sha256",
                                                         "framewatch.truncated"}]
    value = original.record.value
    if value is not None:
        own += [("framewatch.original_size", str(len(value)).encode()),
                ("framewatch.original_sha256", hashlib.sha256(value).hexdigest().encode())]
    own.append(("framewatch.value_omitted", _clip(_utf8(refusal), MAX_DETAIL_BYTES)))
    return DeadLetter(None, b"", own, own, True)


def sanitise_headers(headers: object) -> tuple[list[tuple[str, bytes]], list[int], int]:
    """(headers the producer accepts, positions of null values, count dropped for size)."""
    out: list[tuple[str, bytes]] = []
    nulls: list[int] = []
    size = 0
    try:
        items = list(headers or ())  # type: ignore[call-overload]
    except TypeError:
        return [], [], 0
    for i, item in enumerate(items):
        try:
            raw_key, raw_value = item
        except (TypeError, ValueError):
            nulls.append(i)
            continue
        key = _text(raw_key)
        if raw_value is None:
            nulls.append(i)
            value = b""
        elif isinstance(raw_value, (bytes, bytearray, memoryview)):
            value = bytes(raw_value)
        else:
            value = _text(raw_value).encode()
        size += len(key.encode()) + len(value)
        out.append((key, value))
    if size > MAX_ORIGINAL_HEADER_BYTES:
        return [], nulls, len(out)
    return out, nulls, 0


def _text(value: object) -> str:
    """Any header key as a str that encodes to UTF-8 (lone surrogates and undecodable bytes become U+FFFD)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return _SURROGATE.sub("\ufffd", str(value))


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8, a lone surrogate (which no UTF-8 encoder accepts) written as U+FFFD."""
    return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def _clip(data: bytes, limit: int) -> bytes:
    """Cut to ``limit`` bytes without splitting a UTF-8 sequence."""
    return data[:limit].decode("utf-8", "ignore").encode("utf-8") if len(data) > limit else data
