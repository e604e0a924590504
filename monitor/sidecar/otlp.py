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
a second implementation of a moving spec to keep in step; the official package tracks it.

This module is the record-level entry point (:func:`decode_otlp`, what the pipeline calls) and the public home
of the OTLP names; the two halves of the work are modules of their own, because they change for different
reasons: :mod:`monitor.sidecar.otlp_wire` reads the encodings (protobuf, OTLP/JSON) into plain spans, and
:mod:`monitor.sidecar.genai_spans` maps the GenAI semantic conventions onto events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from monitor.sidecar.events import DecodeError, Event, Limits
from monitor.sidecar.genai_spans import SKIP_REASONS, span_to_event
from monitor.sidecar.otlp_wire import Span, content_type, is_json, is_otlp, spans_from_json, spans_from_proto

__all__ = ["INPUT_FORMATS", "SKIP_REASONS", "OtlpDecoded", "Span", "content_type", "decode_otlp", "is_otlp",
           "span_to_event", "spans_from_json", "spans_from_proto"]

#: FRAMEWATCH_INPUT_FORMAT: README JSON events only, OTLP traces only, or decided per record.
INPUT_FORMATS = ("json", "otlp", "auto")


@dataclass(frozen=True)
class OtlpDecoded:
    """What one record held: the GenAI events, and how many spans were skipped, by reason."""

    events: list[Event]
    skipped: dict[str, int] = field(default_factory=dict)


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
        spans = list(spans_from_json(raw) if is_json(raw, headers) else spans_from_proto(raw))
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
