"""GenAI spans -> events: which OpenTelemetry spans describe an LLM exchange, and what it was.

A span carrying GenAI content in either generation of the semantic conventions becomes an
:class:`~monitor.sidecar.events.Event`:

* current: ``gen_ai.system_instructions``, ``gen_ai.input.messages`` and ``gen_ai.output.messages`` (structured
  AnyValue or a JSON string, both allowed on spans), on the span itself or on its
  ``gen_ai.client.inference.operation.details`` event;
* legacy (v1.36 and before): the span events ``gen_ai.system.message``, ``gen_ai.user.message``,
  ``gen_ai.assistant.message``, ``gen_ai.tool.message`` and ``gen_ai.choice``, whose body fields travel as
  event attributes (flat, or JSON in ``gen_ai.event.content`` as Azure's SDK writes them);
* OpenLLMetry's indexed attributes ``gen_ai.prompt.{i}.role/content`` and ``gen_ai.completion.{i}.content``.

Any other span is skipped with a reason from :data:`SKIP_REASONS`; content that breaks the event limits raises
:class:`~monitor.sidecar.events.DecodeError` as a JSON event would. Apart from the wire format
(:mod:`monitor.sidecar.otlp_wire`) because the conventions move on their own schedule: a new generation of them
changes this module only. Message content is read by the one content reader of the event contract
(:func:`monitor.sidecar.events.content_text`), with the conventions' looser rule for what a text part is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.sidecar.events import DecodeError, Event, Limits, Prompt, content_text
from monitor.sidecar.otlp_wire import Span

#: Why a span produced no event. Bounded: a Prometheus label value.
SKIP_REASONS = ("not_genai", "no_content")

DETAILS_EVENT = "gen_ai.client.inference.operation.details"
LEGACY_SYSTEM, LEGACY_USER, LEGACY_ASSISTANT, LEGACY_TOOL, LEGACY_CHOICE = (
    "gen_ai.system.message", "gen_ai.user.message", "gen_ai.assistant.message", "gen_ai.tool.message",
    "gen_ai.choice")
INPUT_MESSAGES, OUTPUT_MESSAGES, SYSTEM_INSTRUCTIONS = (
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions")
UNKNOWN_MODEL = "unknown"
_INDEXED = re.compile(r"\Agen_ai\.(prompt|completion)\.(\d+)\.(role|content)\Z")
#: Metadata copied from the span's (or its details event's) attributes when present.
_METADATA_KEYS = ("gen_ai.response.id", "gen_ai.request.model", "gen_ai.response.model", "gen_ai.operation.name",
                  "gen_ai.provider.name", "gen_ai.system", "gen_ai.conversation.id")


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
    return role, content_text(message.get("content"), where, _part_text)  # a legacy-style {"role", "content"}


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


def _part_text(part: Any, where: str) -> str | None:
    """The conventions' text part: a bare string, OpenAI's ``{"type": "text", "text"}`` or a semconv part's
    ``content``; anything else (and empty text) holds none."""
    if isinstance(part, str):
        return part or None
    if isinstance(part, dict):
        for key in ("text", "content"):
            if isinstance(part.get(key), str):
                return str(part[key]) or None
    return None


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
            best_choice, out.response = index, content_text(message.get("content"), name, _part_text)
            continue
        out.messages += 1
        text = content_text(body.get("content"), name, _part_text)
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
        role, text = prompts[i].get("role"), content_text(prompts[i].get("content"), f"gen_ai.prompt.{i}", _part_text)
        out.messages += 1
        if role in {"system", "developer"} and text:
            out.system.append(text)
        elif role == "user" and text:
            out.user.append(text)
    if completions:
        first = min(completions)
        out.response = content_text(completions[first].get("content"), f"gen_ai.completion.{first}", _part_text)
    return out
