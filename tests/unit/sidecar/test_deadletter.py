"""Dead letters the producer cannot refuse because of the record (monitor.sidecar.deadletter).

The end-to-end half (the real producer and broker refusing, the headers-only fallback on the wire) is in
tests/integration/sidecar/test_faults.py; here each sanitising rule is checked on the built record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from monitor.sidecar.deadletter import MAX_KEY_BYTES, dead_letter, headers_only, sanitise_headers
from monitor.sidecar.pipeline import Record, Rejected


def rejected(value: bytes | None, headers: Sequence[tuple[object, object]] | None = None, key: bytes | None = None,
             reason: str = "invalid_json") -> Rejected:
    return Rejected(Record("t", 2, 41, value, list(headers or []), key), reason, "detail with a \udc80 lone surrogate")  # type: ignore[arg-type]


def own(letter_headers: list[tuple[str, bytes]]) -> dict[str, bytes]:
    return {k: v for k, v in letter_headers if k.startswith("framewatch.")}


def encodable(headers: list[tuple[str, bytes]]) -> bool:
    return all(isinstance(k, str) and isinstance(v, bytes) and k.encode("utf-8") is not None for k, v in headers)


def test_original_bytes_key_and_headers_are_kept_with_reason_detail_and_source() -> None:
    letter = dead_letter(rejected(b"{bad", [("x-a", b"1")], key=b"k1"), max_value_bytes=100)
    assert letter.value == b"{bad" and letter.key == b"k1" and not letter.truncated
    assert ("x-a", b"1") in letter.headers
    headers = own(letter.headers)
    assert headers["framewatch.reason"] == b"invalid_json"
    assert headers["framewatch.source"] == b"t:2:41"
    assert headers["framewatch.detail"].decode("utf-8")  # the lone surrogate was replaced, not sent
    assert encodable(letter.headers)


def test_value_over_the_limit_is_truncated_with_size_and_sha256() -> None:
    value = b"v" * 101
    letter = dead_letter(rejected(value), max_value_bytes=100)
    headers = own(letter.headers)
    assert letter.value == value[:100] and letter.truncated
    assert headers["framewatch.original_size"] == b"101"
    assert headers["framewatch.original_sha256"] == hashlib.sha256(value).hexdigest().encode()
    at_limit = dead_letter(rejected(b"v" * 100), max_value_bytes=100)
    assert not at_limit.truncated and "framewatch.truncated" not in own(at_limit.headers)


def test_tombstone_null_and_non_utf8_headers_become_sendable() -> None:
    letter = dead_letter(rejected(None, [("x-null", None), (b"k\xff", b"v"), ("k\ud800", b"w")]),
                         max_value_bytes=100)
    headers = own(letter.headers)
    assert letter.value == b"" and headers["framewatch.null_value"] == b"true"
    assert headers["framewatch.null_headers"] == b"0"
    assert ("x-null", b"") in letter.headers
    assert ("k\ufffd", b"v") in letter.headers and ("k\ufffd", b"w") in letter.headers
    assert encodable(letter.headers)


def test_huge_key_and_header_set_are_replaced_by_what_identifies_them() -> None:
    key = b"k" * (MAX_KEY_BYTES + 1)
    many = [(f"h{i}", b"v" * 1000) for i in range(40)]
    letter = dead_letter(rejected(b"{bad", many, key=key), max_value_bytes=100)
    headers = own(letter.headers)
    assert letter.key is None
    assert headers["framewatch.original_key_sha256"] == hashlib.sha256(key).hexdigest().encode()
    assert headers["framewatch.headers_dropped"] == b"40"
    assert not [k for k, _ in letter.headers if not k.startswith("framewatch.")]


def test_headers_only_fallback_keeps_coordinates_size_and_digest() -> None:
    value = b"x" * 5000
    original = rejected(value, [("x-a", b"1")], key=b"k")
    letter = headers_only(dead_letter(original, max_value_bytes=1000), original, "MessageSizeTooLargeError")
    headers = own(letter.headers)
    assert letter.value == b"" and letter.key is None
    assert all(k.startswith("framewatch.") for k, _ in letter.headers)
    assert headers["framewatch.source"] == b"t:2:41"
    assert headers["framewatch.original_size"] == b"5000"
    assert headers["framewatch.original_sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert headers["framewatch.value_omitted"] == b"MessageSizeTooLargeError"
    assert "framewatch.truncated" not in headers or headers["framewatch.truncated"] == b"true"


def test_sanitise_headers_never_raises_on_odd_shapes() -> None:
    assert sanitise_headers(None) == ([], [], 0)
    assert sanitise_headers(5) == ([], [], 0)
    out, nulls, dropped = sanitise_headers([("a", b"1"), ("b",), ("c", "text"), ("d", None)])
    assert out == [("a", b"1"), ("c", b"text"), ("d", b"")] and nulls == [1, 3] and dropped == 0
