"""The sidecar against a real Kafka-compatible broker (Tansu): dead letters, kill -9, SIGTERM, outage."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor import _replay as replay
from monitor._tansu import LocalBroker, free_port
from tests.conftest import needs_model
from tests.harness import (
    SidecarProcess,
    committed_offsets,
    end_offsets,
    produce,
    read_all,
    wait_for,
)

pytestmark = [pytest.mark.broker, needs_model]
TOPIC, DLQ, PARTITIONS = "llm.inferences", "llm.inferences.dlq", 3


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    b = LocalBroker(log_path=tmp_path / "broker.log").start()
    b.create_topics({TOPIC: PARTITIONS, DLQ: 1})
    yield b
    b.stop()


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    yield started
    for s in started:
        s.stop()


def good_events(n: int, seed: int = 0, prefix: str = "ev") -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    rows = replay.load_rows()
    out = []
    for i in range(n):
        _, value = replay.make_event(rng.choice(rows), rng)
        obj = json.loads(value)
        obj["event_id"] = f"{prefix}-{i}"
        out.append((obj["event_id"], json.dumps(obj).encode()))
    return out


def malformed_events(n: int) -> list[tuple[str, bytes]]:
    return [(f"bad-{i}", replay.MALFORMED[i % len(replay.MALFORMED)]) for i in range(n)]


def start_sidecar(broker: LocalBroker, tmp_path: Path, sidecars: list[SidecarProcess], name: str,
                  **kw: object) -> SidecarProcess:
    s = SidecarProcess(broker.bootstrap, tmp_path / f"{name}.log", **kw).start()  # type: ignore[arg-type]
    sidecars.append(s)
    return s


def all_committed(broker: LocalBroker, group: str = "framewatch-test") -> bool:
    ends = end_offsets(broker.bootstrap, TOPIC, PARTITIONS)
    committed = committed_offsets(broker.bootstrap, group)
    return all(committed.get(p, -1) == end for p, end in ends.items())


def test_malformed_events_go_to_the_dead_letter_topic(broker: LocalBroker, tmp_path: Path,
                                                      sidecars: list[SidecarProcess]) -> None:
    events = good_events(1950) + malformed_events(50)
    random.Random(1).shuffle(events)
    produce(broker.bootstrap, TOPIC, events)
    s = start_sidecar(broker, tmp_path, sidecars, "sidecar")
    wait_for(lambda: s.processed() + s.metric("framewatch_events_dead_lettered_total") >= 2000, 240,
             "2,000 events handled")
    assert s.processed() == 1950
    assert s.metric("framewatch_events_dead_lettered_total") == 50
    dlq = read_all(broker.bootstrap, DLQ, 50)
    assert len(dlq) == 50
    by_value = {v for _, v in malformed_events(50)}
    for record in dlq:
        headers = dict(record.headers)
        assert headers["framewatch.reason"].decode() in {"invalid_json", "invalid_utf8", "not_an_object",
                                                         "missing_field", "wrong_type", "invalid_messages"}
        assert headers["framewatch.source"].decode().startswith(f"{TOPIC}:")
        assert record.value in by_value  # the original bytes, untouched
    wait_for(lambda: all_committed(broker), 30, "offsets committed to the end of every partition")
    assert s.proc is not None and s.proc.poll() is None  # still consuming: no record killed it


def test_kill_9_mid_stream_loses_nothing(broker: LocalBroker, tmp_path: Path,
                                         sidecars: list[SidecarProcess]) -> None:
    events = good_events(3000, seed=2)
    produce(broker.bootstrap, TOPIC, events)
    first = start_sidecar(broker, tmp_path, sidecars, "first")
    wait_for(lambda: first.processed() >= 300, 180, "the first sidecar to process some events")
    first.kill9()
    assert not all_committed(broker), "the test must kill the sidecar mid-stream"
    second = start_sidecar(broker, tmp_path, sidecars, "second")
    wait_for(lambda: all_committed(broker), 300, "the restarted sidecar to commit every partition's end")
    seen = {e["event_id"] for s in (first, second) for e in s.log_events("event_processed")}
    missing = {key for key, _ in events} - seen
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"


def test_sigterm_finishes_commits_and_exits_zero(broker: LocalBroker, tmp_path: Path,
                                                 sidecars: list[SidecarProcess]) -> None:
    produce(broker.bootstrap, TOPIC, good_events(500, seed=3))
    s = start_sidecar(broker, tmp_path, sidecars, "sidecar")
    wait_for(lambda: s.processed() >= 500, 120, "500 events processed")
    assert s.terminate() == 0
    assert all_committed(broker)
    assert s.log_events("consumer_stopped")


def test_broker_outage_not_ready_then_resumes(tmp_path: Path, sidecars: list[SidecarProcess]) -> None:
    port = free_port()
    broker = LocalBroker(port=port, log_path=tmp_path / "broker.log").start()
    try:
        broker.create_topics({TOPIC: PARTITIONS, DLQ: 1})
        produce(broker.bootstrap, TOPIC, good_events(100, seed=4, prefix="before"))
        s = start_sidecar(broker, tmp_path, sidecars, "sidecar")
        wait_for(lambda: s.processed() >= 100, 120, "events before the outage")
        s.wait_ready()
        broker.stop()
        wait_for(lambda: s.get("/readyz")[0] == 503, 60, "/readyz 503 while the broker is down")
        assert s.get("/healthz")[0] == 200 and s.proc is not None and s.proc.poll() is None
        broker = LocalBroker(port=port, log_path=tmp_path / "broker2.log").start()  # memory only: empty again
        broker.create_topics({TOPIC: PARTITIONS, DLQ: 1})
        # Tansu keeps nothing across a restart, so the topic starts again at offset 0, while the sidecar may still
        # hold its old positions (~25 per partition) if its group has not been rebuilt yet; real Kafka keeps the
        # log. Spacer events fill the offsets below any old position, so the events under test lie beyond it.
        produce(broker.bootstrap, TOPIC, good_events(200, seed=6, prefix="spacer"))
        produce(broker.bootstrap, TOPIC, good_events(100, seed=5, prefix="after"))
        wait_for(lambda: {e["event_id"] for e in s.log_events("event_processed")} >= {f"after-{i}" for i in range(100)},
                 180, "events produced after the broker came back")
        s.wait_ready(60)
    finally:
        broker.stop()
