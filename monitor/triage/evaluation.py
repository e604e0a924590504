"""Framewatch's verdict in the shape of an OpenTelemetry ``gen_ai.evaluation.result`` event.

Why: teams that trace their LLM calls look at them in an OTel backend. Carrying each verdict in the GenAI
semantic conventions' evaluation-result shape lets a Collector (a Kafka receiver on the flagged topic plus a
transform) or a backend put Framewatch's judgement next to the span it judges, without a Framewatch-specific
mapping: the event is parented to the judged span by its trace and span id, and joined to the completion by
``gen_ai.response.id``.

The shape is an OTel log-record event in plain JSON: ``event_name``, ``trace_id`` / ``span_id`` (hex, the judged
span; null when the event came without them) and ``attributes``. The explanation names the framing, cluster
and scores, never prompt or response text: the flagged topic's redaction applies to text, and this field must not
be a way around it.
"""

from __future__ import annotations

from typing import Any

from monitor.sidecar.pipeline import Verdict

EVENT_NAME = "gen_ai.evaluation.result"
EVALUATION_NAME = "framewatch.misalignment"
LABEL_MISALIGNED, LABEL_ALIGNED = "misaligned", "aligned"


def evaluation_result(verdict: Verdict) -> dict[str, Any]:
    """The ``gen_ai.evaluation.result`` event for one verdict (added to every flagged-topic record)."""
    metadata = verdict.event.metadata if isinstance(verdict.event.metadata, dict) else {}
    score = round(float(verdict.misalignment_score), 4)
    label = LABEL_MISALIGNED if verdict.misaligned else LABEL_ALIGNED
    framing = verdict.framing
    if framing.framing != "none":
        context = f"{framing.framing} framing of cluster {framing.cluster} (similarity {float(framing.similarity):.2f})"
    else:
        context = "no trigger framing"
    attributes: dict[str, Any] = {
        "gen_ai.evaluation.name": EVALUATION_NAME,
        "gen_ai.evaluation.score.value": score,
        "gen_ai.evaluation.score.label": label,
        "gen_ai.evaluation.explanation": f"response scored {score} by the misalignment classifier ({label}); "
                                         f"prompt: {context}",
    }
    response_id = metadata.get("gen_ai.response.id")
    if isinstance(response_id, str) and response_id:
        attributes["gen_ai.response.id"] = response_id
    span_id = metadata.get("otel.span_id")
    return {
        "event_name": EVENT_NAME,
        "trace_id": metadata.get("otel.trace_id") or verdict.event.trace_id,
        "span_id": span_id if isinstance(span_id, str) else None,
        "attributes": attributes,
    }
