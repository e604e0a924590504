"""The event contract: one JSON object per Kafka message, decoded and validated here.

Decoding never raises anything but :class:`DecodeError`, whose ``reason`` comes from a small fixed set
(it becomes a metric label and the dead-letter reason header), so one bad record can never kill the
consumer. The same contract is published as JSON Schema in ``monitor/schemas/event.schema.json``.

Why "total" is enforced twice: every nested value is type-checked before it is used (a ``role`` that is a
list must not reach a set lookup), and :func:`decode_event` still turns any exception it did not foresee into
a ``processing_error`` dead letter, because a record that raises once raises on every redelivery and would
otherwise pin its partition for good. Numbers Python cannot hold exactly (more digits than its
integer-string limit) or that are not JSON (NaN, Infinity) are rejected as ``invalid_number`` with the JSON
path; lone surrogates (``"\\ud800"``), which no UTF-8 encoder accepts later on, as ``invalid_utf8``.
Rejection details never quote an offending value: they go to logs and to the dead-letter headers.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    "invalid_number",  # an integer beyond Python's digit limit, or NaN / Infinity (not JSON)
    "processing_error",  # valid JSON that made the analysis itself fail (a bug to report, kept for replay)
    "undecodable_record",  # the Kafka client could not deserialise the record (e.g. a non-UTF-8 header key)
    "invalid_otlp",  # FRAMEWATCH_INPUT_FORMAT otlp/auto: not an OTLP ExportTraceServiceRequest (monitor.sidecar.otlp)
)

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: Digits Python's ``int()`` accepts from a string by default (``sys.get_int_max_str_digits``); 0 = unlimited.
_INT_DIGITS = sys.get_int_max_str_digits() or 1 << 62

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
    try:
        return _decode(raw, headers, limits or Limits())
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract: one record never escapes as anything else
        raise DecodeError("processing_error", f"decode failed: {type(exc).__name__}") from None


def _decode(raw: bytes | None, headers: Iterable[tuple[str, bytes | None]], limits: Limits) -> Event:
    if raw is None:
        raise DecodeError("invalid_json", "message has no value (tombstone)")
    if len(raw) > limits.max_event_bytes:
        raise DecodeError("oversized", f"{len(raw)} bytes > max_event_bytes {limits.max_event_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("invalid_utf8", str(exc)) from None
    obj = _loads(text)
    if "\\u" in text:  # a lone surrogate can only come from an escape: skip the walk for plain text
        _reject_lone_surrogates(obj)
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
        if not isinstance(role, str):
            raise DecodeError("invalid_messages", f"messages[{i}].role must be a string, got {type(role).__name__}")
        if role not in CHAT_ROLES:  # the value itself is not quoted: it is caller data headed for the logs
            raise DecodeError("invalid_messages", f"messages[{i}].role is not one of {', '.join(sorted(CHAT_ROLES))}")
        content = content_text(message.get("content"), f"messages[{i}]", _typed_text_part)
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


def content_text(content: Any, where: str, part_text: Callable[[Any, str], str | None]) -> str:
    """A message's content as text. OpenAI-style content is a string or a list of parts; ``part_text`` reads one
    part (``where`` names the message, parts are ``<where>.content[j]``) and returns its text, None if it has none.

    One reader of the content shape for every input (README events here, OTLP GenAI spans in
    :mod:`monitor.sidecar.genai_spans`); what counts as a text part is the caller's rule: the README contract is
    strict (:func:`_typed_text_part`), the OpenTelemetry conventions also allow bare strings and ``content`` keys.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (part_text(part, f"{where}.content[{j}]") for j, part in enumerate(content))
        return "\n".join(text for text in texts if text is not None)
    raise DecodeError("invalid_messages", f"{where}.content must be a string or a list of parts")


def _typed_text_part(part: Any, where: str) -> str | None:
    """The README contract: every part is an object with a string ``type``; only ``text`` parts count."""
    if not isinstance(part, dict):
        raise DecodeError("invalid_messages", f"{where} is not an object")
    kind, text = part.get("type"), part.get("text")
    if kind is not None and not isinstance(kind, str):
        raise DecodeError("invalid_messages", f"{where}.type must be a string")
    if text is not None and not isinstance(text, str):
        raise DecodeError("invalid_messages", f"{where}.text must be a string")
    return text if kind == "text" else None


class _BadNumber:
    """Stands in for a number JSON decoding refused, so the walk in :func:`_loads` can name its path."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind


def _loads(text: str) -> Any:
    """``json.loads`` that rejects what Python would otherwise raise on (huge ints) or accept (NaN, inf)."""
    bad: list[_BadNumber] = []

    def parse_int(digits: str) -> int | _BadNumber:
        if len(digits) - digits.startswith("-") > _INT_DIGITS:
            bad.append(_BadNumber(f"integer with {len(digits)} digits (limit {_INT_DIGITS})"))
            return bad[-1]
        return int(digits)

    def parse_float(literal: str) -> float | _BadNumber:
        value = float(literal)
        if not math.isfinite(value):
            bad.append(_BadNumber("number out of the float range"))
            return bad[-1]
        return value

    def parse_constant(name: str) -> _BadNumber:
        bad.append(_BadNumber(f"{name} is not a JSON number"))
        return bad[-1]

    try:
        obj = json.loads(text, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant)
    except RecursionError:
        raise DecodeError("invalid_json", "nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise DecodeError("invalid_json", str(exc)[:200]) from None
    if bad:
        path = next((p for p, v in _walk(obj) if isinstance(v, _BadNumber)), "$")
        raise DecodeError("invalid_number", f"{path}: {bad[0].kind}")
    return obj


def _reject_lone_surrogates(obj: Any) -> None:
    for path, value in _walk(obj):
        if isinstance(value, str) and _has_lone_surrogate(value):
            raise DecodeError("invalid_utf8", f"{path}: lone UTF-16 surrogate in a string")


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _walk(obj: Any) -> Iterator[tuple[str, Any]]:
    """Every value (and object key, as a string) with its JSON path; iterative, so depth cannot overflow."""
    stack: list[tuple[str, Any]] = [("$", obj)]
    while stack:
        path, value = stack.pop()
        yield path, value
        if isinstance(value, dict):
            for key, child in reversed(list(value.items())):
                yield f"{path}.<key>", key
                stack.append((f"{path}.{_path_key(key)}", child))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", child) for i, child in reversed(list(enumerate(value))))


def _path_key(key: str) -> str:
    """A key as it may appear in a path in logs: plain identifiers only, anything else elided."""
    return key if key.isidentifier() and key.isascii() and len(key) <= 64 else "<key>"
