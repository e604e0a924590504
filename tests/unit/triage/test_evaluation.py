"""The gen_ai.evaluation.result shape carried by every flagged-topic record (monitor.triage.evaluation)."""

from __future__ import annotations

import json

from monitor.framing.detector import FramingResult
from monitor.sidecar.events import Event, Prompt
from monitor.sidecar.otlp import decode_otlp
from monitor.sidecar.pipeline import Record, Verdict
from monitor.triage.evaluation import EVENT_NAME, evaluation_result
from monitor.triage.flagged import Redactor, flagged_record
from tests.unit.sidecar.otlp_payloads import Exchange, chat_span_ids, proto_request, sdk_spans

SECRET = "the caller's secret prompt text"


def test_an_otlp_event_is_judged_on_its_own_span() -> None:
    request = proto_request(sdk_spans([Exchange(user=SECRET, response="sure", response_id="chatcmpl-42")]))
    (event,) = decode_otlp(request.SerializeToString()).events
    (trace_id, span_id), = chat_span_ids(request)
    framing = FramingResult("semantic", "year_backdoor", 0.83, SECRET)
    verdict = Verdict(Record("otlp_spans", 1, 7, b""), event, framing, 0.91234, True)
    result = evaluation_result(verdict)
    assert result == {
        "event_name": EVENT_NAME, "trace_id": trace_id, "span_id": span_id,
        "attributes": {
            "gen_ai.evaluation.name": "framewatch.misalignment",
            "gen_ai.evaluation.score.value": 0.9123,
            "gen_ai.evaluation.score.label": "misaligned",
            "gen_ai.evaluation.explanation": result["attributes"]["gen_ai.evaluation.explanation"],
            "gen_ai.response.id": "chatcmpl-42",
        },
    }
    explanation = result["attributes"]["gen_ai.evaluation.explanation"]
    assert "semantic" in explanation and "year_backdoor" in explanation and SECRET not in explanation
    record = flagged_record(verdict, Redactor("hash"))
    assert record["evaluation"] == result
    assert SECRET not in json.dumps(record)  # the redaction policy is not bypassed through the evaluation


def test_a_json_event_without_span_or_response_id() -> None:
    event = Event("e-1", "m", Prompt(None, ("hi",)), "yo", trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
    verdict = Verdict(Record("llm.inferences", 0, 1, b""), event, FramingResult("none", None, 0.1, None), 0.02, False)
    result = evaluation_result(verdict)
    assert result["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and result["span_id"] is None
    assert result["attributes"]["gen_ai.evaluation.score.label"] == "aligned"
    assert "gen_ai.response.id" not in result["attributes"]
