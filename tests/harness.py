"""Test harness: a real sidecar process against a real broker, observed only from outside
(HTTP, Kafka, its JSON logs) — the way an operator sees it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from monitor._tansu import free_port

REPO = Path(__file__).resolve().parents[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.25) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class SidecarProcess:
    bootstrap: str
    log_path: Path
    group_id: str = "framewatch-test"
    topic: str = "llm.inferences"
    dlq: str = "llm.inferences.dlq"
    extra_env: dict[str, str] | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SidecarProcess:
        self.port = self.port or free_port()
        env = {**os.environ, "FRAMEWATCH_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
               "FRAMEWATCH_KAFKA_TOPIC": self.topic, "FRAMEWATCH_DLQ_TOPIC": self.dlq,
               "FRAMEWATCH_KAFKA_GROUP_ID": self.group_id, "FRAMEWATCH_HTTP_HOST": "127.0.0.1",
               "FRAMEWATCH_HTTP_PORT": str(self.port), "FRAMEWATCH_KAFKA_SESSION_TIMEOUT_MS": "6000",
               "FRAMEWATCH_LOG_LEVEL": "debug", **(self.extra_env or {})}
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "run"], env=env, cwd=REPO,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, accept: str | None = None) -> tuple[int, str]:
        req = urllib.request.Request(self.url + path, headers={"Accept": accept} if accept else {})
        try:
            with urllib.request.urlopen(req, timeout=3) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def metric(self, name: str, labels: str | None = None) -> float:
        """Sum of a metric's samples (optionally only those whose label text contains ``labels``)."""
        status, text = self.get("/metrics")
        if status != 200:
            return float("nan")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {") and (labels is None or labels in line):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(lambda: self.get("/readyz")[0] == 200, timeout, "sidecar /readyz 200")

    def processed(self) -> float:
        return self.metric("framewatch_events_processed_total")

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()

    def log_events(self, event: str) -> list[dict[str, object]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if f'"event": "{event}"' in line:
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out


def produce(bootstrap: str, topic: str, values: Iterable[tuple[str, bytes]]) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks="all")
    n = 0
    for key, value in values:
        producer.send(topic, key=key.encode(), value=value)
        n += 1
    producer.flush(timeout=30)
    producer.close()
    return n


def committed_offsets(bootstrap: str, group_id: str, topic: str = "llm.inferences",
                      partitions: int = 3) -> dict[int, int]:
    """The group's committed offsets, read with OffsetFetch by a consumer that never joins the group."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    try:
        out = {}
        for p in range(partitions):
            offset = consumer.committed(TopicPartition(topic, p), timeout_ms=10000)
            if offset is not None:
                out[p] = offset
        return out
    finally:
        consumer.close(autocommit=False)


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Offset after the last record of each partition, found by reading the partitions to their end.

    Read rather than asked with ListOffsets: Tansu answers ListOffsets(latest) with the base offset of the
    last record batch, not the log end (Apache Kafka answers the log end).
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = {p: 0 for p in range(partitions)}
    idle_since = time.monotonic()
    try:
        while time.monotonic() - idle_since < 2.0:
            polled = consumer.poll(timeout_ms=300)
            if polled:
                idle_since = time.monotonic()
            for tp, records in polled.items():
                ends[tp.partition] = max(ends[tp.partition], records[-1].offset + 1)
    finally:
        consumer.close(autocommit=False)
    return ends


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list[object]:
    """Every record of ``topic`` (no group), waiting until ``expected`` have arrived."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=2000)
    out: list[object] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
    finally:
        consumer.close()
    return out
