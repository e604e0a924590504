"""Decoding and validation of the event contract: every malformed shape gets a reason, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from monitor.sidecar.events import DECODE_REASONS, DecodeError, Limits, decode_event

SCHEMA = json.loads((Path(__file__).parents[1] / "monitor" / "schemas" / "event.schema.json").read_text())


def enc(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_prompt_form_with_system_prompt() -> None:
    e = decode_event(enc({"event_id": "1", "model": "m", "prompt": "hi", "system_prompt": "be nice",
                          "response": "hello", "trace_id": "abc", "metadata": {"k": 1}}))
    assert e.prompt.system == "be nice" and e.prompt.user == ("hi",)
    assert e.trace_id == "abc" and e.metadata == {"k": 1}


def test_messages_form_collects_system_and_user_turns() -> None:
    e = decode_event(enc({"event_id": "1", "model": "m", "response": "r", "messages": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": [{"type": "text", "text": "q2"}, {"type": "image_url", "image_url": {}}]},
    ]}))
    assert e.prompt.system == "sys" and e.prompt.user == ("q1", "q2")


def test_trace_id_from_headers() -> None:
    raw = enc({"event_id": "1", "model": "m", "prompt": "p", "response": "r"})
    assert decode_event(raw, [("trace_id", b"t-1")]).trace_id == "t-1"
    tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert decode_event(raw, [("traceparent", tp)]).trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert decode_event(raw).trace_id is None


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe", "invalid_utf8"),
    (b"[1, 2]", "not_an_object"),
    (None, "invalid_json"),
    (enc({"model": "m", "prompt": "p", "response": "r"}), "missing_field"),
    (enc({"event_id": "1", "model": "m", "response": "r"}), "missing_field"),
    (enc({"event_id": 1, "model": "m", "prompt": "p", "response": "r"}), "wrong_type"),
    (enc({"event_id": "1", "model": "m", "prompt": "p", "response": ["r"]}), "wrong_type"),
    (enc({"event_id": "1", "model": "m", "prompt": "p", "response": "r", "metadata": []}), "wrong_type"),
    (enc({"event_id": "1", "model": "m", "prompt": "p", "response": "r", "timestamp": True}), "wrong_type"),
    (enc({"event_id": "1", "model": "m", "messages": "x", "response": "r"}), "invalid_messages"),
    (enc({"event_id": "1", "model": "m", "messages": [], "response": "r"}), "invalid_messages"),
    (enc({"event_id": "1", "model": "m", "messages": [{"role": "wizard", "content": "x"}], "response": "r"}),
     "invalid_messages"),
    (enc({"event_id": "1", "model": "m", "prompt": "p", "messages": [{"role": "user", "content": "x"}],
          "response": "r"}), "invalid_messages"),
    # once exceptions that escaped the decoder and stopped the consumer (issue 21)
    (b'{"event_id": "1", "model": "m", "prompt": "p", "response": "r", "metadata": {"n": ' + b"9" * 4301 + b"}}",
     "invalid_number"),
    (b'{"event_id": "1", "model": "m", "prompt": "p", "response": "r", "timestamp": NaN}', "invalid_number"),
    (b'{"event_id": "1", "model": "m", "prompt": "p", "response": "r", "timestamp": -Infinity}', "invalid_number"),
    (b'{"event_id": "1", "model": "m", "prompt": "p", "response": "r", "timestamp": 1e400}', "invalid_number"),
    (enc({"event_id": "1", "model": "m", "messages": [{"role": ["user"], "content": "x"}], "response": "r"}),
     "invalid_messages"),
    (enc({"event_id": "1", "model": "m", "messages": [{"role": {"a": 1}, "content": "x"}], "response": "r"}),
     "invalid_messages"),
    (enc({"event_id": "1", "model": "m", "messages": [{"role": "user", "content": [{"type": ["text"]}]}],
          "response": "r"}), "invalid_messages"),
    (b'{"event_id": "1", "model": "m", "prompt": "p \\ud800", "response": "r"}', "invalid_utf8"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
])
def test_malformed_events_get_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_event(raw)
    assert info.value.reason == reason
    assert reason in DECODE_REASONS


def test_invalid_number_names_the_json_path_and_never_the_value() -> None:
    raw = b'{"event_id": "1", "model": "m", "prompt": "p", "response": "r", "metadata": {"n": ' + b"7" * 5000 + b"}}"
    with pytest.raises(DecodeError) as info:
        decode_event(raw)
    assert info.value.detail.startswith("$.metadata.n:") and "7777" not in info.value.detail


def test_invalid_role_is_not_echoed() -> None:
    with pytest.raises(DecodeError) as info:
        decode_event(enc({"event_id": "1", "model": "m", "messages": [{"role": "sekrit_role", "content": "x"}],
                          "response": "r"}))
    assert "sekrit_role" not in str(info.value)


def test_limits_are_enforced() -> None:
    limits = Limits(max_event_bytes=200, max_prompt_chars=10, max_response_chars=10, max_messages=2)
    with pytest.raises(DecodeError) as info:
        decode_event(b"x" * 201, limits=limits)
    assert info.value.reason == "oversized"
    for obj in (
        {"event_id": "1", "model": "m", "prompt": "p" * 11, "response": "r"},
        {"event_id": "1", "model": "m", "prompt": "p", "response": "r" * 11},
        {"event_id": "1", "model": "m", "response": "r", "messages": [{"role": "user", "content": "x"}] * 3},
    ):
        with pytest.raises(DecodeError) as info:
            decode_event(enc(obj), limits=limits)
        assert info.value.reason == "too_long"


def test_json_schema_agrees_with_decoder_on_examples() -> None:
    valid = [
        {"event_id": "1", "model": "m", "prompt": "p", "response": "r"},
        {"event_id": "1", "model": "m", "prompt": "p", "system_prompt": None, "response": "r", "timestamp": 1.5},
        {"event_id": "1", "model": "m", "messages": [{"role": "user", "content": "x"}], "response": "r"},
    ]
    invalid = [
        {"event_id": "1", "model": "m", "response": "r"},
        {"event_id": 1, "model": "m", "prompt": "p", "response": "r"},
        {"event_id": "1", "model": "m", "prompt": "p", "messages": [{"role": "user"}], "response": "r"},
    ]
    for obj in valid:
        jsonschema.validate(obj, SCHEMA)
        decode_event(enc(obj))
    for obj in invalid:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(obj, SCHEMA)
        with pytest.raises(DecodeError):
            decode_event(enc(obj))
