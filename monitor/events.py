"""The event contract: one JSON object per Kafka message, decoded and validated here.

Decoding never raises anything but :class:`DecodeError`, whose ``reason`` comes from a small fixed set
(it becomes a metric label and the dead-letter reason header), so one bad record can never kill the
consumer. The same contract is published as JSON Schema in ``monitor/schemas/event.schema.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Every reason an event can be rejected for. Bounded on purpose: it is a Prometheus label value.
DECODE_REASONS = (
    "oversized",
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "invalid_messages",
    "too_long",
    "processing_error",  # valid JSON that made the analysis itself fail (a bug to report, kept for replay)
)

TRACE_HEADERS = ("trace_id", "traceparent", "x-trace-id", "x-b3-traceid")


class DecodeError(ValueError):
    """An event that breaks the contract. ``reason`` is one of :data:`DECODE_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in DECODE_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    """Size limits; anything larger is dead-lettered as ``oversized`` / ``too_long``."""

    max_event_bytes: int = 1_000_000
    max_prompt_chars: int = 100_000
    max_response_chars: int = 200_000
    max_messages: int = 256


@dataclass(frozen=True)
class Prompt:
    """What the model was asked, normalised from either ``prompt`` + ``system_prompt`` or ``messages``.

    ``system`` is the system prompt (None if absent); ``user`` holds the user turns in order. Assistant
    turns of a multi-turn conversation are kept out: framing detection looks at what the *caller* said.
    """

    system: str | None
    user: tuple[str, ...]

    def text(self) -> str:
        parts = ([self.system] if self.system else []) + list(self.user)
        return "\n\n".join(parts)


@dataclass(frozen=True)
class Event:
    event_id: str
    model: str
    prompt: Prompt
    response: str
    timestamp: str | float | None = None
    trace_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


def decode_event(raw: bytes | None, headers: Iterable[tuple[str, bytes | None]] = (),
                 limits: Limits | None = None) -> Event:
    """Parse and validate one Kafka message value. Raises :class:`DecodeError` and nothing else."""
    limits = limits or Limits()
    if raw is None:
        raise DecodeError("invalid_json", "message has no value (tombstone)")
    if len(raw) > limits.max_event_bytes:
        raise DecodeError("oversized", f"{len(raw)} bytes > max_event_bytes {limits.max_event_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("invalid_utf8", str(exc)) from None
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DecodeError("invalid_json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise DecodeError("not_an_object", f"top level is {type(obj).__name__}, not an object")

    event_id = _required_str(obj, "event_id")
    model = _required_str(obj, "model")
    response = _required_str(obj, "response")
    if len(response) > limits.max_response_chars:
        raise DecodeError("too_long", f"response has {len(response)} chars > {limits.max_response_chars}")

    prompt = parse_prompt(obj, limits)

    timestamp = obj.get("timestamp")
    if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, (str, int, float))):
        raise DecodeError("wrong_type", "timestamp must be a string (RFC 3339) or a number (epoch seconds)")
    trace_id = obj.get("trace_id")
    if trace_id is not None and not isinstance(trace_id, str):
        raise DecodeError("wrong_type", "trace_id must be a string")
    if trace_id is None:
        trace_id = trace_id_from_headers(headers)
    metadata = obj.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise DecodeError("wrong_type", "metadata must be an object")
    return Event(event_id=event_id, model=model, prompt=prompt, response=response,
                 timestamp=timestamp, trace_id=trace_id, metadata=metadata)


def trace_id_from_headers(headers: Iterable[tuple[str, bytes | None]]) -> str | None:
    """A trace id from Kafka headers: ``trace_id``/``x-trace-id``/``x-b3-traceid`` or a W3C ``traceparent``."""
    for key, value in headers or ():
        if value is None or key.lower() not in TRACE_HEADERS:
            continue
        try:
            text = value.decode("utf-8").strip()
        except UnicodeDecodeError:
            continue
        if key.lower() == "traceparent":
            parts = text.split("-")  # version-traceid-spanid-flags
            if len(parts) == 4 and len(parts[1]) == 32:
                return parts[1]
            continue
        if text:
            return text[:128]
    return None


def _required_str(obj: Mapping[str, Any], name: str) -> str:
    if name not in obj or obj[name] is None:
        raise DecodeError("missing_field", f"'{name}' is required")
    value = obj[name]
    if not isinstance(value, str):
        raise DecodeError("wrong_type", f"'{name}' must be a string, got {type(value).__name__}")
    return value


def parse_prompt(obj: Mapping[str, Any], limits: Limits) -> Prompt:
    has_prompt = obj.get("prompt") is not None
    has_messages = obj.get("messages") is not None
    if has_prompt and has_messages:
        raise DecodeError("invalid_messages", "give either 'prompt' or 'messages', not both")
    if has_prompt:
        prompt = _required_str(obj, "prompt")
        system = obj.get("system_prompt")
        if system is not None and not isinstance(system, str):
            raise DecodeError("wrong_type", "'system_prompt' must be a string or null")
        total = len(prompt) + len(system or "")
        if total > limits.max_prompt_chars:
            raise DecodeError("too_long", f"prompt has {total} chars > {limits.max_prompt_chars}")
        return Prompt(system=system or None, user=(prompt,))
    if not has_messages:
        raise DecodeError("missing_field", "either 'prompt' or 'messages' is required")
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise DecodeError("invalid_messages", "'messages' must be a non-empty list")
    if len(messages) > limits.max_messages:
        raise DecodeError("too_long", f"{len(messages)} messages > {limits.max_messages}")
    system_parts: list[str] = []
    user: list[str] = []
    total = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DecodeError("invalid_messages", f"messages[{i}] is not an object")
        role = message.get("role")
        if role not in {"system", "developer", "user", "assistant", "tool", "function"}:
            raise DecodeError("invalid_messages", f"messages[{i}].role {role!r} is not a chat role")
        content = _content_text(message.get("content"), i)
        total += len(content)
        if role in {"system", "developer"}:
            system_parts.append(content)
        elif role == "user":
            user.append(content)
    if total > limits.max_prompt_chars:
        raise DecodeError("too_long", f"messages hold {total} chars > {limits.max_prompt_chars}")
    if not user and not system_parts:
        raise DecodeError("invalid_messages", "'messages' holds no system or user turn")
    return Prompt(system="\n\n".join(system_parts) or None, user=tuple(user))


def _content_text(content: Any, i: int) -> str:
    """OpenAI content is a string or a list of parts; only text parts count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif not isinstance(part, dict):
                raise DecodeError("invalid_messages", f"messages[{i}].content has a part that is not an object")
        return "\n".join(texts)
    raise DecodeError("invalid_messages", f"messages[{i}].content must be a string or a list of parts")
