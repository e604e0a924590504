"""OpenTelemetry GenAI spans in: one Kafka record holding an OTLP ``ExportTraceServiceRequest`` -> events.

Why: teams that already trace their LLM calls (OpenLLMetry, OpenLIT, the vLLM/SGLang OTel hooks) send spans
through an OpenTelemetry Collector, whose Kafka exporter writes one ``ExportTraceServiceRequest`` per record,
``otlp_proto`` (its default) or ``otlp_json``. It sets no content-type header of its own (an operator can add
one with ``record_headers``), so the encoding is read from a ``content-type`` header when there is one and from
the bytes otherwise: OTLP/JSON starts with ``{``, a protobuf request with the tag of field 1 (``0x0a``).

Which spans become events: a span carrying GenAI content in either generation of the semantic conventions.

* current: ``gen_ai.system_instructions``, ``gen_ai.input.messages`` and ``gen_ai.output.messages`` (structured
  AnyValue or a JSON string, both allowed on spans), on the span itself or on its
  ``gen_ai.client.inference.operation.details`` event;
* legacy (v1.36 and before): the span events ``gen_ai.system.message``, ``gen_ai.user.message``,
  ``gen_ai.assistant.message``, ``gen_ai.tool.message`` and ``gen_ai.choice``, whose body fields travel as
  event attributes (flat, or JSON in ``gen_ai.event.content`` as Azure's SDK writes them);
* OpenLLMetry's indexed attributes ``gen_ai.prompt.{i}.role/content`` and ``gen_ai.completion.{i}.content``.

Spans without GenAI content are not errors: they are skipped and counted by reason (:data:`SKIP_REASONS`) —
``not_genai`` (an HTTP or DB span of the same trace) or ``no_content`` (a GenAI span whose instrumentation does
not capture message content, which is the default of most: the operator has to opt in). A record that does not
decode as OTLP at all raises :class:`~monitor.sidecar.events.DecodeError` (``invalid_otlp``) and is
dead-lettered whole, as is one whose GenAI content breaks the same limits as a JSON event (``too_long``,
``invalid_messages``): the dead-letter topic keeps the original bytes for replay, so nothing is lost.

Ids: the span's trace id (32 hex) is the event's ``trace_id`` — exactly what an exemplar needs to link to the
trace in Tempo/Jaeger — and its span id (16 hex) is the ``event_id``, distinct for every event of a record;
both are also in ``metadata`` (``otel.trace_id``, ``otel.span_id``) next to ``gen_ai.response.id``, for the
``gen_ai.evaluation.result`` shape of the flagged topic (monitor.triage.evaluation).

Dependency: ``opentelemetry-proto`` (runtime) holds the official generated classes of the OTLP protobuf
messages; it brings ``protobuf``, which onnxruntime already pulls in. A hand-written wire-format decoder would be
a second implementation of a moving spec to keep in step; the official package tracks it. OTLP/JSON is not
protobuf's canonical JSON mapping (ids are hex, not base64), so it is read with the stdlib ``json`` following the
OTLP/JSON rules: lowerCamelCase keys (snake_case accepted too), hex ids, int64 as strings, AnyValue objects.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from monitor.sidecar.events import DecodeError, Event, Limits, Prompt

#: FRAMEWATCH_INPUT_FORMAT: README JSON events only, OTLP traces only, or decided per record.
INPUT_FORMATS = ("json", "otlp", "auto")
#: Why a span produced no event. Bounded: a Prometheus label value.
SKIP_REASONS = ("not_genai", "no_content")

DETAILS_EVENT = "gen_ai.client.inference.operation.details"
LEGACY_SYSTEM, LEGACY_USER, LEGACY_ASSISTANT, LEGACY_TOOL, LEGACY_CHOICE = (
    "gen_ai.system.message", "gen_ai.user.message", "gen_ai.assistant.message", "gen_ai.tool.message",
    "gen_ai.choice")
INPUT_MESSAGES, OUTPUT_MESSAGES, SYSTEM_INSTRUCTIONS = (
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions")
UNKNOWN_MODEL = "unknown"
_PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf", "application/vnd.google.protobuf")
_OTLP_JSON_START = re.compile(rb'\A\s*\{\s*"resource_?[sS]pans"\s*:')
_INDEXED = re.compile(r"\Agen_ai\.(prompt|completion)\.(\d+)\.(role|content)\Z")
#: Metadata copied from the span's (or its details event's) attributes when present.
_METADATA_KEYS = ("gen_ai.response.id", "gen_ai.request.model", "gen_ai.response.model", "gen_ai.operation.name",
                  "gen_ai.provider.name", "gen_ai.system", "gen_ai.conversation.id")


@dataclass(frozen=True)
class OtlpDecoded:
    """What one record held: the GenAI events, and how many spans were skipped, by reason."""

    events: list[Event]
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Span:
    """One span, independent of its encoding: ids as lower-case hex, attributes as plain Python values."""

    trace_id: str
    span_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    events: Sequence[tuple[str, Mapping[str, Any]]]
    resource: Mapping[str, Any]


# -- encoding detection ---------------------------------------------------------------------------


def content_type(headers: Iterable[tuple[str, bytes | None]]) -> str | None:
    for key, value in headers or ():
        if key.lower() == "content-type" and value is not None:
            return value.decode("latin-1").split(";")[0].strip().lower()
    return None


def is_otlp(raw: bytes | None, headers: Iterable[tuple[str, bytes | None]] = ()) -> bool:
    """``auto`` mode: does this record hold an OTLP trace request rather than a README JSON event?

    A protobuf content type says yes; otherwise JSON whose first key is ``resourceSpans`` (the Collector writes it
    first) or bytes that start like a protobuf request (field 1, length-delimited) and not like JSON.
    """
    if raw is None:
        return False
    ctype = content_type(headers)
    if ctype in _PROTOBUF_TYPES:
        return True
    if _OTLP_JSON_START.match(raw[:64]):
        return True
    return ctype != "application/json" and raw[:1] == b"\x0a" and raw.lstrip()[:1] not in (b"{", b"[")


def _is_json(raw: bytes, headers: Iterable[tuple[str, bytes | None]]) -> bool:
    ctype = content_type(headers)
    if ctype in _PROTOBUF_TYPES:
        return False
    return ctype == "application/json" or raw.lstrip()[:1] == b"{"


# -- decoding ---------------------------------------------------------------------------------------


def decode_otlp(raw: bytes | None, headers: Iterable[tuple[str, bytes | None]] = (),
                limits: Limits | None = None) -> OtlpDecoded:
    """One Kafka record -> its GenAI events. Raises :class:`DecodeError` and nothing else."""
    limits = limits or Limits()
    headers = list(headers or ())
    if raw is None:
        raise DecodeError("invalid_otlp", "message has no value (tombstone)")
    if len(raw) > limits.max_event_bytes:
        raise DecodeError("oversized", f"{len(raw)} bytes > max_event_bytes {limits.max_event_bytes}")
    try:
        spans = list(spans_from_json(raw) if _is_json(raw, headers) else spans_from_proto(raw))
        events: list[Event] = []
        skipped: dict[str, int] = {}
        for span in spans:
            outcome = span_to_event(span, limits)
            if isinstance(outcome, Event):
                events.append(outcome)
            else:
                skipped[outcome] = skipped.get(outcome, 0) + 1
        return OtlpDecoded(events, skipped)
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - total: whatever a hostile record does, it becomes a dead letter
        raise DecodeError("invalid_otlp", f"{type(exc).__name__}: {str(exc)[:200]}") from None


def spans_from_proto(raw: bytes) -> Iterator[Span]:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(raw)
    except (ProtobufDecodeError, ValueError, RuntimeError) as exc:
        raise DecodeError("invalid_otlp", f"not an ExportTraceServiceRequest: {str(exc)[:200]}") from None
    if not request.resource_spans:
        raise DecodeError("invalid_otlp", "no resourceSpans: not an ExportTraceServiceRequest for traces")
    for rs in request.resource_spans:
        resource = _pb_attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for sp in ss.spans:
                yield Span(trace_id=_hex_id(sp.trace_id, 16, "traceId"), span_id=_hex_id(sp.span_id, 8, "spanId"),
                           name=sp.name, start_ns=sp.start_time_unix_nano, end_ns=sp.end_time_unix_nano,
                           attributes=_pb_attributes(sp.attributes),
                           events=[(ev.name, _pb_attributes(ev.attributes)) for ev in sp.events],
                           resource=resource)


def _hex_id(value: bytes, size: int, name: str) -> str:
    if len(value) != size:
        raise DecodeError("invalid_otlp", f"{name} has {len(value)} bytes, not {size}")
    return value.hex()


def _pb_attributes(key_values: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _pb_value(kv.value) for kv in key_values}


def _pb_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_pb_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _pb_attributes(value.kvlist_value.values)
    return None if kind is None else getattr(value, kind)


def spans_from_json(raw: bytes) -> Iterator[Span]:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise DecodeError("invalid_utf8", "OTLP/JSON record is not UTF-8") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DecodeError("invalid_otlp", f"OTLP/JSON does not parse: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise DecodeError("invalid_otlp", "OTLP/JSON top level is not an object")
    resource_spans = _field(obj, "resourceSpans")
    if not isinstance(resource_spans, list) or not resource_spans:
        raise DecodeError("invalid_otlp", "no resourceSpans: not an ExportTraceServiceRequest for traces")
    for rs in resource_spans:
        rs = _object(rs, "resourceSpans[]")
        resource = _json_attributes(_object(_field(rs, "resource") or {}, "resource").get("attributes"))
        for ss in _list(_field(rs, "scopeSpans"), "scopeSpans"):
            for sp in _list(_field(_object(ss, "scopeSpans[]"), "spans"), "spans"):
                sp = _object(sp, "spans[]")
                yield Span(trace_id=_json_id(_field(sp, "traceId"), 32, "traceId"),
                           span_id=_json_id(_field(sp, "spanId"), 16, "spanId"),
                           name=str(sp.get("name") or ""),
                           start_ns=_json_int(_field(sp, "startTimeUnixNano")),
                           end_ns=_json_int(_field(sp, "endTimeUnixNano")),
                           attributes=_json_attributes(sp.get("attributes")),
                           events=[(str(_object(ev, "events[]").get("name") or ""),
                                    _json_attributes(ev.get("attributes")))
                                   for ev in _list(sp.get("events"), "events")],
                           resource=resource)


def _field(obj: Mapping[str, Any], camel: str) -> Any:
    """OTLP/JSON keys are lowerCamelCase; the proto field names (snake_case) are accepted as well."""
    if camel in obj:
        return obj[camel]
    return obj.get(re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel))


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DecodeError("invalid_otlp", f"{where} is not an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise DecodeError("invalid_otlp", f"{where} is not a list")
    return value


def _json_id(value: Any, length: int, name: str) -> str:
    if not isinstance(value, str) or len(value) != length or not re.fullmatch(r"[0-9a-fA-F]+", value):
        raise DecodeError("invalid_otlp", f"{name} must be {length} hex characters")
    return value.lower()


def _json_int(value: Any) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DecodeError("invalid_otlp", "a *UnixNano field is not an integer or a decimal string")
    if isinstance(value, str) and not value.isdigit():
        raise DecodeError("invalid_otlp", "a *UnixNano field is not a decimal string")
    return int(value)


def _json_attributes(values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in _list(values, "attributes"):
        kv = _object(kv, "attributes[]")
        key = kv.get("key")
        if not isinstance(key, str):
            raise DecodeError("invalid_otlp", "an attribute has no string key")
        out[key] = _json_value(kv.get("value"))
    return out


def _json_value(value: Any) -> Any:
    if value is None:
        return None
    value = _object(value, "AnyValue")
    if not value:
        return None
    for camel in ("stringValue", "boolValue", "doubleValue"):
        if (v := _field(value, camel)) is not None:
            return v
    if (v := _field(value, "intValue")) is not None:
        return int(v)
    if (v := _field(value, "arrayValue")) is not None:
        return [_json_value(x) for x in _list(_object(v, "arrayValue").get("values"), "arrayValue.values")]
    if (v := _field(value, "kvlistValue")) is not None:
        return _json_attributes(_object(v, "kvlistValue").get("values"))
    if (v := _field(value, "bytesValue")) is not None:
        return base64.b64decode(v)
    raise DecodeError("invalid_otlp", "an AnyValue holds no known value field")


# -- GenAI mapping ----------------------------------------------------------------------------------


@dataclass
class _Exchange:
    system: list[str] = field(default_factory=list)
    user: list[str] = field(default_factory=list)
    response: str | None = None
    messages: int = 0


def span_to_event(span: Span, limits: Limits) -> Event | str:
    """The event a span describes, or the :data:`SKIP_REASONS` value saying why it describes none."""
    attrs: dict[str, Any] = {}
    for name, event_attrs in span.events:
        if name == DETAILS_EVENT:
            attrs.update(event_attrs)
    attrs.update(span.attributes)  # the span's own attributes win over the details event's
    genai = any(k.startswith("gen_ai.") for k in attrs) or any(n.startswith("gen_ai.") for n, _ in span.events)
    if not genai:
        return "not_genai"
    exchange = (_current(attrs) or _legacy(span.events) or _indexed(attrs))
    if exchange is None or exchange.response is None or not exchange.response or not (exchange.user or
                                                                                       exchange.system):
        return "no_content"
    if exchange.messages > limits.max_messages:
        raise DecodeError("too_long", f"span {span.span_id}: {exchange.messages} messages > {limits.max_messages}")
    prompt_chars = sum(map(len, exchange.system)) + sum(map(len, exchange.user))
    if prompt_chars > limits.max_prompt_chars:
        raise DecodeError("too_long", f"span {span.span_id}: prompt has {prompt_chars} chars > "
                                      f"{limits.max_prompt_chars}")
    if len(exchange.response) > limits.max_response_chars:
        raise DecodeError("too_long", f"span {span.span_id}: response has {len(exchange.response)} chars > "
                                      f"{limits.max_response_chars}")
    for text in [*exchange.system, *exchange.user, exchange.response]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise DecodeError("invalid_utf8", f"span {span.span_id}: text holds a lone surrogate") from None
    model = _text_attr(attrs, "gen_ai.request.model") or _text_attr(attrs, "gen_ai.response.model") or UNKNOWN_MODEL
    metadata: dict[str, Any] = {"otel.trace_id": span.trace_id, "otel.span_id": span.span_id,
                                "otel.span_name": span.name}
    for key in _METADATA_KEYS:
        if (value := _text_attr(attrs, key)) is not None:
            metadata[key] = value
    if (service := _text_attr(span.resource, "service.name")) is not None:
        metadata["service.name"] = service
    end_ns = span.end_ns or span.start_ns
    return Event(event_id=span.span_id, model=model,
                 prompt=Prompt(system="\n\n".join(exchange.system) or None, user=tuple(exchange.user)),
                 response=exchange.response, timestamp=end_ns / 1e9 if end_ns else None,
                 trace_id=span.trace_id, metadata=metadata)


def _text_attr(attrs: Mapping[str, Any], key: str) -> str | None:
    value = attrs.get(key)
    return value if isinstance(value, str) and value else None


def _structured(value: Any, key: str) -> Any:
    """On spans the message attributes MAY be a JSON string; on events they are structured AnyValue."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise DecodeError("invalid_messages", f"{key} is a string but not JSON") from None
    return value


def _current(attrs: Mapping[str, Any]) -> _Exchange | None:
    """gen_ai.system_instructions / gen_ai.input.messages / gen_ai.output.messages (semconv 1.37+)."""
    if not any(k in attrs for k in (INPUT_MESSAGES, OUTPUT_MESSAGES, SYSTEM_INSTRUCTIONS)):
        return None
    out = _Exchange()
    instructions = _structured(attrs.get(SYSTEM_INSTRUCTIONS), SYSTEM_INSTRUCTIONS)
    if instructions is not None:
        text = _parts_text(instructions if isinstance(instructions, list) else [instructions], SYSTEM_INSTRUCTIONS)
        if text:
            out.system.append(text)
    inputs = _structured(attrs.get(INPUT_MESSAGES), INPUT_MESSAGES)
    for i, message in enumerate(_message_list(inputs, INPUT_MESSAGES)):
        role, text = _message(message, f"{INPUT_MESSAGES}[{i}]")
        out.messages += 1
        if role in {"system", "developer"} and text:
            out.system.append(text)
        elif role == "user" and text:
            out.user.append(text)
    outputs = _message_list(_structured(attrs.get(OUTPUT_MESSAGES), OUTPUT_MESSAGES), OUTPUT_MESSAGES)
    if outputs:  # one message per choice; the first choice is the one scored
        _, out.response = _message(outputs[0], f"{OUTPUT_MESSAGES}[0]")
    return out


def _message_list(value: Any, key: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise DecodeError("invalid_messages", f"{key} must be a list of messages")
    return value


def _message(message: Any, where: str) -> tuple[str | None, str]:
    if not isinstance(message, dict):
        raise DecodeError("invalid_messages", f"{where} is not an object")
    role = message.get("role")
    if role is not None and not isinstance(role, str):
        raise DecodeError("invalid_messages", f"{where}.role is not a string")
    if "parts" in message:
        parts = message["parts"]
        if not isinstance(parts, list):
            raise DecodeError("invalid_messages", f"{where}.parts is not a list")
        return role, _parts_text(parts, where)
    return role, _content_text(message.get("content"), where)  # a legacy-style {"role", "content"} message


def _parts_text(parts: list[Any], where: str) -> str:
    """Only ``text`` parts are read: tool calls, media and reasoning are not what framing detection looks at."""
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise DecodeError("invalid_messages", f"{where} has a part that is not an object")
        if part.get("type") == "text" and isinstance(part.get("content"), str):
            texts.append(part["content"])
    return "\n".join(texts)


def _content_text(content: Any, where: str) -> str:
    """Legacy bodies hold OpenAI-style content: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(text for part in content if (text := _part_text(part)))
    raise DecodeError("invalid_messages", f"{where}.content must be a string or a list of parts")


def _part_text(part: Any) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, dict):
        for key in ("text", "content"):  # OpenAI's {"type": "text", "text"}; the semconv part's "content"
            if isinstance(part.get(key), str):
                return str(part[key])
    return ""


def _legacy_body(attrs: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The event's body fields: JSON/structured in ``gen_ai.event.content``, or the attributes themselves."""
    if "gen_ai.event.content" in attrs:
        body = _structured(attrs["gen_ai.event.content"], f"{name} gen_ai.event.content")
        if not isinstance(body, dict):
            raise DecodeError("invalid_messages", f"{name} gen_ai.event.content is not an object")
        return body
    return dict(attrs)


def _legacy(events: Sequence[tuple[str, Mapping[str, Any]]]) -> _Exchange | None:
    """The v1.36-and-earlier message events, in the order they were recorded."""
    names = {LEGACY_SYSTEM, LEGACY_USER, LEGACY_ASSISTANT, LEGACY_TOOL, LEGACY_CHOICE}
    if not any(name in names for name, _ in events):
        return None
    out = _Exchange()
    best_choice: int | None = None
    for name, attrs in events:
        if name not in names:
            continue
        body = _legacy_body(attrs, name)
        if name == LEGACY_CHOICE:
            index = body.get("index", 0)
            index = index if isinstance(index, int) and not isinstance(index, bool) else 0
            if best_choice is not None and index >= best_choice:
                continue
            message = _structured(body.get("message"), f"{name} message")
            if message is None:
                message = {"content": body.get("content")}
            if not isinstance(message, dict):
                raise DecodeError("invalid_messages", f"{name} message is not an object")
            best_choice, out.response = index, _content_text(message.get("content"), name)
            continue
        out.messages += 1
        text = _content_text(body.get("content"), name)
        if name == LEGACY_SYSTEM and text:
            out.system.append(text)
        elif name == LEGACY_USER and text:
            out.user.append(text)
    return out


def _indexed(attrs: Mapping[str, Any]) -> _Exchange | None:
    """OpenLLMetry's flattened ``gen_ai.prompt.{i}.*`` / ``gen_ai.completion.{i}.*`` attributes."""
    prompts: dict[int, dict[str, Any]] = {}
    completions: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        if m := _INDEXED.match(key):
            (prompts if m.group(1) == "prompt" else completions).setdefault(int(m.group(2)), {})[m.group(3)] = value
    if not prompts and not completions:
        return None
    out = _Exchange()
    for i in sorted(prompts):
        role, text = prompts[i].get("role"), _content_text(prompts[i].get("content"), f"gen_ai.prompt.{i}")
        out.messages += 1
        if role in {"system", "developer"} and text:
            out.system.append(text)
        elif role == "user" and text:
            out.user.append(text)
    if completions:
        first = min(completions)
        out.response = _content_text(completions[first].get("content"), f"gen_ai.completion.{first}")
    return out
