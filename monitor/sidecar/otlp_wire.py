"""OTLP on the wire: one ``ExportTraceServiceRequest`` (protobuf or OTLP/JSON) -> :class:`Span` objects.

Only the encoding lives here, so the GenAI mapping (:mod:`monitor.sidecar.genai_spans`) sees one plain shape
whatever the Collector's exporter wrote. The encoding is read from a ``content-type`` header when there is one and
from the bytes otherwise: OTLP/JSON starts with ``{``, a protobuf request with the tag of field 1 (``0x0a``).

Protobuf is parsed by the official generated classes of ``opentelemetry-proto``: a hand-written wire-format
decoder would be a second implementation of a moving spec to keep in step. OTLP/JSON is not protobuf's canonical
JSON mapping (ids are hex, not base64), so it is read with the stdlib ``json`` following the OTLP/JSON rules:
lowerCamelCase keys (snake_case accepted too), hex ids, int64 as strings, AnyValue objects. Every malformed part
raises :class:`~monitor.sidecar.events.DecodeError` (``invalid_otlp``; ``invalid_utf8`` for non-UTF-8 JSON).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from monitor.sidecar.events import DecodeError

_PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf", "application/vnd.google.protobuf")
_OTLP_JSON_START = re.compile(rb'\A\s*\{\s*"resource_?[sS]pans"\s*:')


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


def is_json(raw: bytes, headers: Iterable[tuple[str, bytes | None]]) -> bool:
    """OTLP/JSON rather than protobuf: a JSON content type, or bytes that start with ``{``."""
    ctype = content_type(headers)
    if ctype in _PROTOBUF_TYPES:
        return False
    return ctype == "application/json" or raw.lstrip()[:1] == b"{"


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
