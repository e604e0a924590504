"""From one captured HTTP exchange to one inference event of the README's contract.

Runs in the publisher thread, never on the request path: the proxy only copies bytes (up to
``tap_max_body_bytes``) and this module parses them after the client already has its answer. Nothing here
raises for a bad body: :func:`build_event` returns a :class:`Skipped` with a reason instead, so one odd
request can never stop the publisher.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Paths whose exchanges become events (after stripping a trailing slash); everything else only passes through.
CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"
CAPTURED_PATHS = {CHAT_PATH: "chat_completions", COMPLETIONS_PATH: "completions"}
#: Roles the event contract accepts (monitor/schemas/event.schema.json).
CHAT_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


@dataclass
class Exchange:
    """What the proxy saw of one finished request/response pair. Headers are kept out on purpose: only the
    trace id is taken from them, so credentials can never reach an event."""

    path: str
    status: int
    request_body: bytes
    response_body: bytes
    response_content_type: str = ""
    response_content_encoding: str = ""
    trace_id: str | None = None
    started_at: float = 0.0  # epoch seconds, when the request arrived
    duration_s: float = 0.0  # request arrival to the last byte sent to the client
    ended_at: float = 0.0  # time.monotonic() at the last byte, for the publish lag
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skipped:
    """No event for this exchange; ``reason`` is a bounded metric label (see publisher.DROP_REASONS)."""

    reason: str
    detail: str = ""


def trace_id_from_traceparent(value: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` (version-traceid-spanid-flags), or None if malformed."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        try:
            int(parts[1], 16)
        except ValueError:
            return None
        return parts[1].lower()
    return None


def build_event(ex: Exchange) -> dict[str, Any] | Skipped:
    """The event for a successful chat or text completion, or why there is none."""
    route = CAPTURED_PATHS.get(ex.path)
    if route is None:
        return Skipped("not_captured", "path is not a completion endpoint")
    request = _json_object(ex.request_body)
    if request is None:
        return Skipped("not_captured", "request body is not a JSON object")
    body = _decoded(ex.response_body, ex.response_content_encoding)
    if body is None:
        return Skipped("not_captured", f"response content-encoding {ex.response_content_encoding!r}")
    if "text/event-stream" in ex.response_content_type:
        answer = reassemble_sse(body, chat=route == "chat_completions")
    else:
        answer = _from_json_response(body, chat=route == "chat_completions")
    if isinstance(answer, Skipped):
        return answer
    event: dict[str, Any] = {
        "event_id": answer.response_id or str(uuid.uuid4()),
        "model": answer.model or _str(request.get("model")) or "unknown",
        "response": answer.text,
        "timestamp": round(ex.started_at, 3),
    }
    if route == "chat_completions":
        messages = _messages(request.get("messages"))
        if not messages:
            return Skipped("not_captured", "request has no usable messages")
        event["messages"] = messages
    else:
        prompt = _prompt(request.get("prompt"))
        if prompt is None:
            return Skipped("not_captured", "prompt is not text (token ids or empty)")
        event["prompt"] = prompt
    if ex.trace_id:
        event["trace_id"] = ex.trace_id
    metadata: dict[str, Any] = {"source": "framewatch-tap", "endpoint": ex.path, "stream": answer.streamed,
                                "finish_reason": answer.finish_reason, "usage": answer.usage,
                                "status": ex.status, "duration_ms": round(ex.duration_s * 1000, 1)}
    if answer.choices > 1:
        metadata["choices"] = answer.choices  # the event carries choice 0; n > 1 answered more
    event["metadata"] = metadata | ex.extra
    return event


# -------------------------------------------------------------------------------------------- responses


@dataclass
class Answer:
    text: str
    response_id: str | None
    model: str | None
    finish_reason: str | None
    usage: dict[str, Any] | None
    streamed: bool
    choices: int = 1


def _from_json_response(body: bytes, *, chat: bool) -> Answer | Skipped:
    obj = _json_object(body)
    if obj is None:
        return Skipped("not_captured", "response body is not a JSON object")
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return Skipped("not_captured", "response has no choices")
    first = _choice(choices, 0)
    if chat:
        message = first.get("message")
        text = _content_text(message.get("content")) if isinstance(message, dict) else None
    else:
        text = _str(first.get("text"))
    if text is None:
        return Skipped("not_captured", "choice 0 carries no text")
    usage = obj.get("usage")
    return Answer(text=text, response_id=_str(obj.get("id")), model=_str(obj.get("model")),
                  finish_reason=_str(first.get("finish_reason")), usage=usage if isinstance(usage, dict) else None,
                  streamed=False, choices=len(choices))


def reassemble_sse(body: bytes, *, chat: bool) -> Answer | Skipped:
    """Choice 0's text from the ``data:`` lines of an OpenAI SSE stream, with finish reason and usage.

    A stream counts as finished when it carried ``data: [DONE]`` or a finish reason for choice 0; the
    proxy has already checked that every byte of it reached the client.
    """
    parts: list[str] = []
    response_id = model = finish_reason = None
    usage: dict[str, Any] | None = None
    done = False
    indexes: set[int] = set()
    for data in _sse_data(body):
        if data == "[DONE]":
            done = True
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if not isinstance(chunk, dict):
            continue
        response_id = response_id or _str(chunk.get("id"))
        model = model or _str(chunk.get("model"))
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            indexes.add(index if isinstance(index, int) else 0)
            if index not in (0, None):
                continue
            if chat:
                delta = choice.get("delta")
                piece = _content_text(delta.get("content")) if isinstance(delta, dict) else None
            else:
                piece = _str(choice.get("text"))
            if piece:
                parts.append(piece)
            finish_reason = _str(choice.get("finish_reason")) or finish_reason
    if not (done or finish_reason):
        return Skipped("incomplete", "stream ended without [DONE] or a finish reason")
    return Answer(text="".join(parts), response_id=response_id, model=model, finish_reason=finish_reason,
                  usage=usage, streamed=True, choices=max(len(indexes), 1))


def _sse_data(body: bytes) -> Iterator[str]:
    """The payload of every SSE event (``data:`` lines joined), per the HTML event-stream format."""
    text = body.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    for block in text.split("\n\n"):
        lines = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if lines:
            yield "\n".join(lines).strip()


# --------------------------------------------------------------------------------------------- requests


def _messages(raw: Any) -> list[dict[str, Any]] | None:
    """The chat messages, reduced to role + text content (images, audio and tool-call payloads dropped)."""
    if not isinstance(raw, list):
        return None
    out: list[dict[str, Any]] = []
    for message in raw:
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            continue
        content = _content_text(message.get("content"))
        out.append({"role": message["role"], "content": content or ""})
    return out or None


def _prompt(raw: Any) -> str | None:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and raw and all(isinstance(p, str) for p in raw):
        return raw[0]  # a batch of prompts: the event describes choice 0, which answers the first prompt
    return None


def _content_text(content: Any) -> str | None:
    """OpenAI content is a string or a list of parts; only text parts are kept."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text"
                 and isinstance(p.get("text"), str)]
        return "\n".join(texts)
    return None


def _choice(choices: list[Any], index: int) -> Mapping[str, Any]:
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == index:
            return choice
    return choices[0] if isinstance(choices[0], dict) else {}


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _decoded(body: bytes, encoding: str) -> bytes | None:
    """The body with its gzip/deflate content-coding undone (the client got the encoded bytes unchanged)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(body, wbits=31)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, wbits=-15)  # raw deflate, as some servers send
    except zlib.error:
        return None
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
