"""The shared-state building blocks of issue 20, in process: the evidence codec and its merge (deduplicated,
deterministic, bounded records), and the registry-topic overlay (latest record per key, order independent of
history, validation before use). The broker round trip is in tests/integration/triage/test_shared_view.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka.consumer.fetcher import ConsumerRecord

from monitor.framing.registry import Registry, RegistryError
from monitor.triage import evidence as ev
from monitor.triage import registry_topic as rt
from monitor.triage.emerging import EmergingConfig, EmergingFramings
from monitor.triage.incidents import IncidentStore
from monitor.triage.view import EvidenceCounts, TriageView
from tests.test_triage import DIM, PIRATE, FakeEmbedder, make_verdict, modelless_registry, pirate_mix


def record(offset: int, key: str | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None,
           partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord("t", partition, None, offset, int(time.time() * 1000), 0, key.encode() if key else None,
                          value, headers or [], None, 0, 0, 0)


def new_view(min_events: int = 30) -> TriageView:
    store = EmergingFramings(None, DIM, EmergingConfig(min_events=min_events))
    return TriageView(IncidentStore(100), store, EvidenceCounts(), 3600.0)


def evidence_of(verdicts: list[Any], now: float, max_bytes: int = 900_000) -> list[ev.Evidence]:
    built = ev.build(verdicts, known_clusters={"tag_wrapper"}, embed=FakeEmbedder().embed, redact=lambda t: t,
                     replica="r1", now=now, max_bytes=max_bytes)
    return [ev.parse(json.dumps(doc).encode()) for _, doc in built]


def test_evidence_round_trip_carries_counts_keys_and_failing_sentences() -> None:
    verdicts = [make_verdict("p", f"Tell me a story? {PIRATE}", True, 5),
                make_verdict("q", "Plain question about things?", False, 6),
                make_verdict("t", "tagged", False, 7, framing="exact", cluster="tag_wrapper"),
                make_verdict("u", "unknown", True, 8, framing="semantic", cluster="not_in_registry")]
    (doc,) = evidence_of(verdicts, 100.0)
    assert (doc.topic, doc.partition, doc.ts) == ("llm.inferences", 0, 100.0)
    by_offset = {e["o"]: e for e in doc.events}
    assert by_offset[5]["s"] == ["Tell me a story?", PIRATE] and len(by_offset[5]["v"]) == 2
    assert "s" not in by_offset[6] and len(by_offset[6]["h"]) == 1  # passing: keys only
    assert (by_offset[7]["c"], by_offset[7]["f"], "h" in by_offset[7]) == ("tag_wrapper", "exact", False)
    assert (by_offset[8]["c"], by_offset[8]["f"]) == ("none", "none")  # counted as the metrics count it
    entry = ev.entry(by_offset[5], doc.topic, doc.partition, DIM)
    assert entry.observation is not None and entry.observation.vectors is not None
    assert entry.observation.vectors.shape == (2, DIM)
    for bad in ({"o": -1, "c": "none", "f": "none", "x": 0}, {"o": 1, "c": "none", "f": "weird", "x": 0},
                {"o": 1, "c": "none", "f": "none", "x": 1, "h": ["k"], "s": ["a"], "v": ["!!"]}, "nope"):
        with pytest.raises((ValueError, TypeError)):
            ev.entry(bad, "t", 0, DIM)
    for value in (None, b"[]", b'{"v": 1, "ts": NaN, "topic": "t", "partition": 0, "events": []}',
                  b'{"v": 2, "ts": 1, "topic": "t", "partition": 0, "events": []}'):
        with pytest.raises(ValueError):
            ev.parse(value)


def test_records_stay_below_the_size_limit() -> None:
    verdicts = [make_verdict(f"e{i}", f"Question {i} of many words here? {PIRATE}", True, i) for i in range(200)]
    built = ev.build(verdicts, known_clusters=set(), embed=FakeEmbedder().embed, redact=lambda t: t,
                     replica="r1", now=1.0, max_bytes=20_000)
    sizes = [len(json.dumps(doc, ensure_ascii=False).encode()) for _, doc in built]
    assert len(built) > 2 and max(sizes) <= 20_000, sizes
    assert {key for key, _ in built} == {b"llm.inferences:0"}  # keyed by source partition: one order
    assert sorted(e["o"] for _, doc in built for e in doc["events"]) == list(range(200))


def test_merge_drops_redelivered_offsets_and_readers_agree() -> None:
    verdicts = pirate_mix(3)
    records = [r for i in range(0, len(verdicts), 100) for r in evidence_of(verdicts[i:i + 100], 1000.0 + i)]
    one, two = new_view(), new_view()
    for r in records:
        one.apply(r)
    for r in records[:4] + records[:4] + records[4:]:  # a redelivered stretch: counted once
        two.apply(r)
    assert one.events_merged == two.events_merged == len(verdicts)
    assert two.duplicates_dropped == 4 * 100
    snap = one.emerging.snapshot(significant_only=False, limit=500)
    assert snap == two.emerging.snapshot(significant_only=False, limit=500)
    (sig,) = one.emerging.snapshot()
    assert sig["representative"] == PIRATE and sig["id"].startswith("cand_")
    assert one.counts.totals("1h") == two.counts.totals("1h")
    one.set_promoted([f"framewatch candidate {sig['id']}", None])
    assert one.emerging.snapshot() == [] and sig["id"] in one.promoted


def test_candidates_age_out_with_the_window() -> None:
    view = new_view()
    for i, r in enumerate(evidence_of(pirate_mix(1), 1000.0)):
        view.apply(r)
        assert i == 0
    assert len(view.emerging) > 0
    late = evidence_of([make_verdict("late", "Something else entirely?", False, 10_000)], 1000.0 + 4 * 3600 + 1)
    view.emerging.cfg = EmergingConfig(min_events=30, window_s=3600.0)
    view.apply(late[0])
    assert len(view.emerging) == 0


def put(offset: int, cluster: dict[str, Any]) -> ConsumerRecord:
    value, headers = rt.edit_record("put", cluster, "token:abc")
    return record(offset, cluster["id"], value, headers)


def test_overlay_keeps_the_latest_record_per_key_and_an_order_free_of_history(tmp_path: Path) -> None:
    base, _ = rt.read_base(modelless_registry(tmp_path))
    first = rt.RegistryOverlay()
    first.apply(put(0, {"id": "zeta", "phrases": ["z z"]}))
    first.apply(put(1, {"id": "alpha", "phrases": ["a a"]}))
    first.apply(put(2, {"id": "zeta", "phrases": ["z z", "zz top"]}))
    first.apply(record(3, "tag_wrapper", *rt.edit_record("delete", None, "token:abc")))
    first.apply(put(4, {"id": "beta", "phrases": ["b b"]}))
    first.apply(record(5, "beta", *rt.edit_record("revert", None, "token:abc")))  # a tombstone
    compacted = rt.RegistryOverlay()  # what a reader sees after compaction: the last record per key
    for r in (put(2, {"id": "zeta", "phrases": ["z z", "zz top"]}), put(1, {"id": "alpha", "phrases": ["a a"]}),
              record(3, "tag_wrapper", *rt.edit_record("delete", None, "token:abc"))):
        compacted.apply(r)
    a = rt.effective_raw(base, first.snapshot()[1])
    b = rt.effective_raw(base, compacted.snapshot()[1])
    assert a == b
    ids = [c["id"] for c in a["clusters"]]
    assert "tag_wrapper" not in ids and "beta" not in ids and ids[-2:] == ["alpha", "zeta"]
    assert [e["op"] for e in first.audit] == ["put", "put", "put", "delete", "put", "revert"]
    assert all(e["by"] == "token:abc" and e["at"] for e in first.audit)
    for bad in (record(6, "Bad\n", b'{"op": "put"}'), record(7, "x_y", b'{"op": "put", "cluster": {"id": "other"}}'),
                record(8, "x_y", b'{"op": "drop"}'), record(9, "x_y", b"not json")):
        with pytest.raises(ValueError):
            first.apply(bad)


def test_registry_source_applies_the_overlay_and_refuses_a_bad_one(tmp_path: Path) -> None:
    path = modelless_registry(tmp_path)
    overlay = rt.RegistryOverlay()
    seen: list[Registry] = []
    errors: list[Exception] = []
    source = rt.RegistrySource(path, overlay, on_change=seen.append, on_error=errors.append)
    source.check()
    assert seen == []  # nothing changed
    overlay.apply(put(0, {"id": "pirate_persona", "phrases": [PIRATE]}))
    source.check()
    assert seen[-1].cluster("pirate_persona").phrases == (PIRATE,) and source.applied(0, 0)
    assert seen[-1].digest == source.effective_digest != rt.read_base(path)[1]
    overlay.apply(put(1, {"id": "broken", "phrases": []}))  # would not validate
    source.check()
    assert len(seen) == 1 and isinstance(errors[-1], RegistryError) and source.applied(0, 1)
    overlay.apply(record(2, "broken", *rt.edit_record("revert", None, "token:abc")))
    raw = yaml.safe_load(path.read_text())
    raw["description"] = "hand edit of the base"
    path.write_text(yaml.safe_dump(raw))
    source.check()
    assert seen[-1].raw["description"] == "hand edit of the base" and "pirate_persona" in seen[-1].cluster_ids()


class _Pending:
    """A send the broker never acknowledges (an outage after the metadata was known)."""

    is_done = False

    def get(self, timeout: float | None = None) -> None:
        time.sleep(min(timeout or 0.0, 0.2))
        raise TimeoutError("no acknowledgement")


class _Unacked:
    def __init__(self) -> None:
        self.sent = 0

    def send(self, topic: str, key: bytes, value: bytes) -> _Pending:
        self.sent += 1
        return _Pending()

    def close(self, timeout: float | None = None) -> None:
        pass


def test_evidence_publisher_gives_up_on_stop_and_never_reports_success() -> None:
    import threading

    from monitor.sidecar.pipeline import SinkUnavailable

    producer = _Unacked()
    pub = ev.EvidencePublisher("e", lambda: producer, give_up_s=600)
    threading.Timer(0.5, pub.stop.set).start()
    with pytest.raises(SinkUnavailable, match="stop requested"):  # the batch is then not committed
        pub.publish([(b"t:0", {"v": 1, "events": []})])
    assert pub.published == 0 and producer.sent >= 1
    quick = ev.EvidencePublisher("e", _Unacked, give_up_s=0.3, ack_timeout_s=0.2)
    with pytest.raises(SinkUnavailable):
        quick.publish([(b"t:0", {"v": 1, "events": []})])
