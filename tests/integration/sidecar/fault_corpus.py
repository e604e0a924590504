"""A generated corpus of records that once stopped (or could stop) the consumer, each with the reason it must get.

Every class the fault issue names is here: huge numbers, non-finite numbers, deep nesting, wrong nested types,
lone surrogates, every size limit at -1/0/+1 byte, values above the producer's request limit, tombstones, null
and non-UTF-8 header values, non-UTF-8 header keys, huge keys and header sets. ``expect`` is the dead-letter
reason, or None for a record that must be processed (the limit itself, a valid surrogate pair, ...).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from monitor.settings import Settings

DEFAULTS = Settings()
MAX_EVENT = DEFAULTS.max_event_bytes
DLQ_MAX = DEFAULTS.dlq_max_value_bytes
REQUEST_MAX = DEFAULTS.kafka_max_request_size
SECRET_ROLE = "sekrit_role_value_7f3a"  # must never appear in the sidecar's logs


class RawKey(str):
    """A header key whose bytes on the wire are ``raw``: how a non-UTF-8 key is produced with kafka-python."""

    _raw: bytes

    def __new__(cls, raw: bytes) -> RawKey:
        obj = super().__new__(cls, raw.decode("latin-1"))
        obj._raw = raw
        return obj

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:  # noqa: ARG002
        return self._raw


class NullHeader(tuple):  # type: ignore[type-arg]
    """A header whose value is null on the wire (Kafka allows it; kafka-python's send() does not).

    send() checks ``item[1]`` is bytes and the record builder writes what unpacking gives, so indexing answers
    b"" while unpacking gives None - except for the size bookkeeping after the write, which needs a length.
    Test tooling only: it is how another client's null header is reproduced with this one.
    """

    def __new__(cls, key: str) -> NullHeader:
        return super().__new__(cls, (key, None))

    def __getitem__(self, index: Any) -> Any:
        return b"" if index == 1 else super().__getitem__(index)

    def __iter__(self) -> Iterator[Any]:
        caller = sys._getframe(1)
        if caller.f_code.co_name == "<genexpr>" and caller.f_back and caller.f_back.f_code.co_name == "try_append":
            return iter((tuple.__getitem__(self, 0), b""))
        return super().__iter__()


@dataclass
class Case:
    name: str
    value: bytes | None
    expect: str | None  # dead-letter reason; None = processed
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    key: bytes | None = None


def event(name: str, **fields: object) -> dict[str, object]:
    return {"event_id": f"case-{name}", "model": "m", "prompt": "What is the capital of France?",
            "response": "Paris is the capital of France.", **fields}


def enc(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def padded(name: str, size: int, valid: bool = True) -> bytes:
    """An event of exactly ``size`` bytes (padding in metadata, which no limit but the byte limit reads)."""
    base = enc(event(name, metadata={"pad": ""}))
    if not valid:
        base = base[:-1]  # drop the closing brace: invalid JSON
    pad = size - len(base)
    assert pad >= 0
    raw = enc(event(name, metadata={"pad": "x" * pad}))
    if not valid:
        raw = raw[:-1]
    assert len(raw) == size, (len(raw), size)
    return raw


def with_number(name: str, literal: str) -> bytes:
    return enc(event(name, metadata={"n": 0})).replace(b'"n": 0', b'"n": ' + literal.encode())


def messages(name: str, msgs: object) -> bytes:
    obj = event(name, messages=msgs)
    del obj["prompt"]
    return enc(obj)


def cases() -> list[Case]:
    out: list[Case] = []

    def add(name: str, value: bytes | None, expect: str | None, **kw: object) -> None:
        out.append(Case(name, value, expect, **kw))  # type: ignore[arg-type]

    # numbers
    add("int_4300_digits", with_number("int_4300_digits", "9" * 4300), None)
    add("int_4301_digits", with_number("int_4301_digits", "9" * 4301), "invalid_number")
    add("negative_int_5000_digits", with_number("negative_int_5000_digits", "-" + "7" * 5000), "invalid_number")
    add("int_1e6_digits", with_number("int_1e6_digits", "1" * 900_000), "invalid_number")
    add("nan", with_number("nan", "NaN"), "invalid_number")
    add("infinity", with_number("infinity", "Infinity"), "invalid_number")
    add("negative_infinity", with_number("negative_infinity", "-Infinity"), "invalid_number")
    add("float_overflow", with_number("float_overflow", "1e400"), "invalid_number")
    add("timestamp_nan", enc(event("timestamp_nan")).replace(b"}", b', "timestamp": NaN}'), "invalid_number")
    # nesting
    add("nesting_200_levels", enc(event("nesting_200_levels", metadata={"deep": json.loads("[" * 200 + "]" * 200)})),
        None)
    add("nesting_100k_levels", enc(event("nesting_100k_levels", metadata={})).replace(
        b'"metadata": {}', b'"metadata": ' + b"[" * 100_000 + b"]" * 100_000), "invalid_json")
    add("nesting_100k_unclosed", b"[" * 100_000, "invalid_json")
    # wrong nested types
    for role_name, role in (("list", ["user"]), ("object", {"r": 1}), ("number", 3), ("null", None),
                            ("unknown_string", SECRET_ROLE)):
        add(f"role_{role_name}", messages(f"role_{role_name}", [{"role": role, "content": "hi"}]), "invalid_messages")
    add("content_object", messages("content_object", [{"role": "user", "content": {"text": "hi"}}]), "invalid_messages")
    add("content_number", messages("content_number", [{"role": "user", "content": 5}]), "invalid_messages")
    add("content_part_string", messages("content_part_string", [{"role": "user", "content": ["hi"]}]),
        "invalid_messages")
    add("content_part_text_number", messages("content_part_text_number",
                                             [{"role": "user", "content": [{"type": "text", "text": 5}]}]),
        "invalid_messages")
    add("content_part_type_list", messages("content_part_type_list",
                                           [{"role": "user", "content": [{"type": ["text"], "text": "hi"}]}]),
        "invalid_messages")
    add("content_parts_valid", messages("content_parts_valid", [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]}]), None)
    add("message_string", messages("message_string", ["user: hi"]), "invalid_messages")
    add("messages_object", messages("messages_object", {"role": "user"}), "invalid_messages")
    add("event_id_number", enc(event("event_id_number", event_id=7)), "wrong_type")
    add("response_list", enc(event("response_list", response=["a"])), "wrong_type")
    add("metadata_list", enc(event("metadata_list", metadata=[1])), "wrong_type")
    add("trace_id_object", enc(event("trace_id_object", trace_id={"id": 1})), "wrong_type")
    add("timestamp_bool", enc(event("timestamp_bool", timestamp=True)), "wrong_type")
    add("system_prompt_number", enc(event("system_prompt_number", system_prompt=1)), "wrong_type")
    add("model_missing", enc({k: v for k, v in event("model_missing").items() if k != "model"}), "missing_field")
    add("top_level_list", b"[1, 2]", "not_an_object")
    add("top_level_null", b"null", "not_an_object")
    add("top_level_string", b'"event"', "not_an_object")
    add("truncated_json", b'{"event_id": "x", "mod', "invalid_json")
    # text encodings
    add("lone_high_surrogate", enc(event("lone_high_surrogate")).replace(b"France?", b"France \\ud800?"),
        "invalid_utf8")
    add("lone_low_surrogate_in_response", enc(event("lone_low_surrogate_in_response")).replace(
        b"Paris", b"\\udc00Paris"), "invalid_utf8")
    add("lone_surrogate_in_metadata_key", enc(event("lone_surrogate_in_metadata_key", metadata={})).replace(
        b'"metadata": {}', b'"metadata": {"\\ud83d": 1}'), "invalid_utf8")
    add("surrogate_pair_valid", enc(event("surrogate_pair_valid")).replace(b"France?", b"France \\ud83d\\ude00?"),
        None)
    add("invalid_utf8_bytes", b'{"event_id": "\xff\xfe", "model": "m"}', "invalid_utf8")
    add("overlong_utf8", b'{"event_id": "\xc0\xaf"}', "invalid_utf8")
    # size limits at -1 / 0 / +1
    add("event_bytes_limit_minus_1", padded("event_bytes_limit_minus_1", MAX_EVENT - 1), None)
    add("event_bytes_at_limit", padded("event_bytes_at_limit", MAX_EVENT), None)
    add("event_bytes_limit_plus_1", padded("event_bytes_limit_plus_1", MAX_EVENT + 1), "oversized")
    add("dlq_value_at_limit", padded("dlq_value_at_limit", DLQ_MAX, valid=False), "invalid_json")
    add("dlq_value_limit_plus_1", padded("dlq_value_limit_plus_1", DLQ_MAX + 1, valid=False), "oversized")
    add("producer_request_limit_minus_1", b"x" * (REQUEST_MAX - 1), "oversized")
    add("producer_request_limit_plus_1", b"x" * (REQUEST_MAX + 1), "oversized")
    add("value_5mb", b"{" + b" " * 5_000_000 + b"}", "oversized")
    limits = ((DEFAULTS.max_prompt_chars, "prompt"), (DEFAULTS.max_response_chars, "response"))
    for limit, fld in limits:
        add(f"{fld}_chars_at_limit", enc(event(f"{fld}_chars_at_limit", **{fld: "a" * limit})), None)
        add(f"{fld}_chars_limit_plus_1", enc(event(f"{fld}_chars_limit_plus_1", **{fld: "a" * (limit + 1)})),
            "too_long")
    turn = {"role": "user", "content": "hi"}
    add("messages_at_limit", messages("messages_at_limit", [turn] * DEFAULTS.max_messages), None)
    add("messages_limit_plus_1", messages("messages_limit_plus_1", [turn] * (DEFAULTS.max_messages + 1)), "too_long")
    # null values, keys and headers
    add("tombstone", None, "invalid_json", key=b"tombstone-key")
    add("empty_value", b"", "invalid_json")
    add("null_header_value_invalid_json", b"{not json", "invalid_json", headers=[NullHeader("x-null")])
    add("null_header_value_valid_event", enc(event("null_header_value_valid_event")), None,
        headers=[NullHeader("trace_id"), NullHeader("x-null")])
    add("non_utf8_header_value", b"{not json", "invalid_json", headers=[("x-bin", b"\xff\xfe\x00")])
    add("non_utf8_header_key", enc(event("non_utf8_header_key")), "undecodable_record",
        headers=[(RawKey(b"k\xff"), b"v")])
    add("surrogate_header_key", enc(event("surrogate_header_key")), "undecodable_record",
        headers=[(RawKey(b"k\xed\xa0\x80"), b"v")])
    add("huge_key", b"{not json", "invalid_json", key=b"k" * 100_000)
    add("huge_header_set", b"{not json", "invalid_json", headers=[(f"h{i}", b"v" * 1000) for i in range(40)])
    return out
