"""OTLP trace payloads as an OpenTelemetry Collector's Kafka exporter writes them, built with the official packages.

Spans come from the OpenTelemetry SDK (``opentelemetry-sdk``) and are encoded by the SDK's own OTLP encoder
(``opentelemetry-exporter-otlp-proto-common``) into ``opentelemetry-proto``'s ``ExportTraceServiceRequest`` —
``otlp_proto``. ``otlp_json`` is that message in protobuf's JSON mapping with the two OTLP/JSON differences the
Collector applies: trace and span ids in hex, enums as integers.

The SDK only takes primitive attribute values, so message attributes go on SDK spans as JSON strings (allowed on
spans); the structured form (AnyValue kvlists, required on events) is built directly with the proto classes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

GENERATIONS = ("current", "details_event", "legacy", "azure_legacy", "openllmetry")


@dataclass(frozen=True)
class Exchange:
    """One LLM call: what the caller sent and what the model answered."""

    user: str
    response: str
    system: str | None = None
    model: str = "llama-3.1-8b"
    response_id: str = "chatcmpl-1"


def _record(build: Callable[[Any], None]) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "chat-api"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    build(provider.get_tracer("tests.otlp"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def sdk_spans(exchanges: Sequence[Exchange], generation: str = "current", noise: int = 0,
              no_content: int = 0) -> list[ReadableSpan]:
    """One ``chat`` span per exchange in the given convention generation, plus ``noise`` non-GenAI spans and
    ``no_content`` GenAI spans recorded without message content (capture off)."""
    assert generation in {"current", "legacy", "azure_legacy", "openllmetry"}, generation

    def build(tracer) -> None:  # type: ignore[no-untyped-def]
        with tracer.start_as_current_span("POST /v1/chat") as root:
            root.set_attribute("http.request.method", "POST")
            for i in range(noise):
                with tracer.start_as_current_span(f"SELECT users {i}") as s:
                    s.set_attribute("db.system", "postgresql")
            for i in range(no_content):
                with tracer.start_as_current_span("chat hidden") as s:
                    s.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": f"m-{i}"})
            for x in exchanges:
                with tracer.start_as_current_span(f"chat {x.model}") as s:
                    s.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                                      "gen_ai.request.model": x.model, "gen_ai.response.model": x.model + "-0613",
                                      "gen_ai.response.id": x.response_id})
                    _content(s, x, generation)

    return _record(build)


def _content(span, x: Exchange, generation: str) -> None:  # type: ignore[no-untyped-def]
    if generation == "current":
        if x.system:
            span.set_attribute("gen_ai.system_instructions", json.dumps([{"type": "text", "content": x.system}]))
        span.set_attribute("gen_ai.input.messages", json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": x.user}]}]))
        span.set_attribute("gen_ai.output.messages", json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": x.response}], "finish_reason": "stop"}]))
    elif generation == "legacy":  # body fields as flat event attributes
        if x.system:
            span.add_event("gen_ai.system.message", {"gen_ai.system": "openai", "role": "system",
                                                      "content": x.system})
        span.add_event("gen_ai.user.message", {"gen_ai.system": "openai", "content": x.user})
        span.add_event("gen_ai.assistant.message", {"content": "an earlier answer, not scored"})
        span.add_event("gen_ai.choice", {"gen_ai.system": "openai", "index": 0, "finish_reason": "stop",
                                         "message": json.dumps({"role": "assistant", "content": x.response})})
    elif generation == "azure_legacy":  # body as JSON in gen_ai.event.content (azure-ai-inference tracing)
        if x.system:
            span.add_event("gen_ai.system.message",
                           {"gen_ai.event.content": json.dumps({"role": "system", "content": x.system})})
        span.add_event("gen_ai.user.message", {"gen_ai.event.content": json.dumps({"content": x.user})})
        span.add_event("gen_ai.choice", {"gen_ai.event.content": json.dumps(
            {"message": {"content": x.response}, "finish_reason": "stop", "index": 0})})
    else:  # openllmetry
        i = 0
        if x.system:
            span.set_attributes({"gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": x.system})
            i = 1
        span.set_attributes({f"gen_ai.prompt.{i}.role": "user", f"gen_ai.prompt.{i}.content": x.user,
                             "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": x.response})


def proto_request(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    return encode_spans(spans)


def to_otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """``otlp_json``: protobuf's JSON mapping, with hex ids and integer enums as OTLP/JSON requires."""
    obj = json_format.MessageToDict(request, use_integers_for_enums=True)
    for rs in obj.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for sp in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in sp:
                        sp[key] = base64.b64decode(sp[key]).hex()
                for link in sp.get("links", []):
                    for key in ("traceId", "spanId"):
                        link[key] = base64.b64decode(link[key]).hex()
    return json.dumps(obj).encode()


# -- the structured form, on a gen_ai.client.inference.operation.details event ----------------------------


def any_value(value: object) -> AnyValue:
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, dict):
        return AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=any_value(v))
                                                          for k, v in value.items()]))
    raise TypeError(type(value))


def details_event_request(exchanges: Sequence[Exchange], base_span_id: int = 1) -> ExportTraceServiceRequest:
    """Spans whose content is only on a ``gen_ai.client.inference.operation.details`` event, structured."""
    spans = sdk_spans(exchanges, generation="current")  # for realistic ids, names and timing
    request = encode_spans(spans)
    chats = [sp for rs in request.resource_spans for ss in rs.scope_spans for sp in ss.spans
             if sp.name.startswith("chat ")]
    for sp, x in zip(chats, exchanges, strict=True):
        keep = [kv for kv in sp.attributes if kv.key not in
                {"gen_ai.system_instructions", "gen_ai.input.messages", "gen_ai.output.messages"}]
        del sp.attributes[:]
        sp.attributes.extend(keep)
        details = {"gen_ai.operation.name": "chat", "gen_ai.request.model": x.model,
                   "gen_ai.response.id": x.response_id,
                   "gen_ai.input.messages": [{"role": "user", "parts": [{"type": "text", "content": x.user}]}],
                   "gen_ai.output.messages": [{"role": "assistant", "finish_reason": "stop",
                                               "parts": [{"type": "text", "content": x.response}]}]}
        if x.system:
            details["gen_ai.system_instructions"] = [{"type": "text", "content": x.system}]
        event = sp.events.add()
        event.name = "gen_ai.client.inference.operation.details"
        event.time_unix_nano = sp.end_time_unix_nano
        event.attributes.extend(KeyValue(key=k, value=any_value(v)) for k, v in details.items())
    return request


def chat_span_ids(request: ExportTraceServiceRequest) -> list[tuple[str, str]]:
    """(trace id, span id) in hex of every ``chat <model>`` span with content, in order."""
    return [(sp.trace_id.hex(), sp.span_id.hex()) for rs in request.resource_spans for ss in rs.scope_spans
            for sp in ss.spans if sp.name.startswith("chat ") and sp.name != "chat hidden"]
