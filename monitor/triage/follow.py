"""Follow a whole topic without a consumer group: every partition assigned, read from a chosen start, forever.

Why no group: the shared triage topics (flagged events, evidence, registry edits) must be read *in full* by
every replica, not split between them; a group would give each replica a share. Offsets are kept in
memory only: a restarted reader rebuilds its state by reading again from the start position (the tail of
the flagged topic, the evidence window, the registry topic from its beginning).

The follower survives broker outages (it closes the client, waits with backoff and resumes at the next
offset it had not handled) and a handler that raises on one record (logged, skipped): no record stops it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from kafka import TopicPartition

from monitor.logs import get_logger

log = get_logger("framewatch.follow")

BACKOFF_MAX_S = 10.0


class Message(Protocol):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


# start(consumer, partitions) -> {partition: first offset}; missing partitions start at their beginning
StartPositions = Callable[[Any, list[TopicPartition]], dict[TopicPartition, int]]


def from_beginning(consumer: Any, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    return {tp: int(o) for tp, o in consumer.beginning_offsets(tps).items()}


def tail(records: int) -> StartPositions:
    """The last ``records`` of each partition (more on brokers that under-report the end offset)."""
    def start(consumer: Any, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        begins, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        return {tp: max(int(begins.get(tp, 0)), int(ends.get(tp, 0)) - records) for tp in tps}
    return start


def since(seconds: float, clock: Callable[[], float] = time.time) -> StartPositions:
    """The first record younger than ``seconds``; the beginning where the broker cannot say."""
    def start(consumer: Any, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        begins = {tp: int(o) for tp, o in consumer.beginning_offsets(tps).items()}
        try:
            found = consumer.offsets_for_times({tp: int((clock() - seconds) * 1000) for tp in tps})
        except Exception as exc:  # noqa: BLE001 - older brokers: read from the beginning, filter by time
            log.info("offsets_for_times_unavailable_reading_from_beginning", error=f"{type(exc).__name__}: {exc}")
            return begins
        out = dict(begins)
        for tp, hit in (found or {}).items():
            if hit is not None:
                out[tp] = max(int(hit.offset), begins.get(tp, 0))
        return out
    return start


class TopicFollower:
    """A daemon thread feeding every record of ``topic`` to ``handle``; ``caught_up`` is set after the first
    poll that found nothing new (the reader had reached the end of what was there when it started)."""

    def __init__(self, name: str, topic: str, consumer_factory: Callable[[], Any],
                 handle: Callable[[Message], None], start: StartPositions = from_beginning,
                 stop: threading.Event | None = None, poll_ms: int = 200) -> None:
        self.name = name
        self.topic = topic
        self._factory = consumer_factory
        self._handle = handle
        self._start = start
        self.stop = stop or threading.Event()
        self.poll_ms = poll_ms
        self.caught_up = threading.Event()
        self.positions: dict[int, int] = {}  # partition -> next offset to read
        self.handled = 0
        self.errors = 0
        self._thread: threading.Thread | None = None

    def start(self) -> TopicFollower:
        self._thread = threading.Thread(target=self.run, name=f"follow-{self.name}", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        delay = 0.5
        while not self.stop.is_set():
            consumer = None
            try:
                consumer = self._factory()
                tps = self._partitions(consumer)
                if tps is None:
                    continue
                consumer.assign(tps)
                starts = self._start(consumer, tps) if not self.positions else {}
                for tp in tps:
                    consumer.seek(tp, self.positions.get(tp.partition, starts.get(tp, 0)))
                delay = 0.5
                self._loop(consumer)
            except Exception as exc:  # noqa: BLE001 - broker trouble: back off and resume where we were
                log.warning("topic_follower_retrying", follower=self.name, topic=self.topic,
                            error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
                self.stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
            finally:
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        consumer.close(autocommit=False)

    def _partitions(self, consumer: Any) -> list[TopicPartition] | None:
        parts = consumer.partitions_for_topic(self.topic)
        if not parts:
            log.info("topic_follower_waiting_for_topic", follower=self.name, topic=self.topic)
            self.stop.wait(2.0)
            return None
        return [TopicPartition(self.topic, p) for p in sorted(parts)]

    def _loop(self, consumer: Any) -> None:
        while not self.stop.is_set():
            polled = consumer.poll(timeout_ms=self.poll_ms)
            if not polled:
                self.caught_up.set()
                continue
            for tp, batch in polled.items():
                for msg in batch:
                    try:
                        self._handle(msg)
                    except Exception as exc:  # noqa: BLE001 - one bad record must not stop the reader
                        self.errors += 1
                        log.warning("topic_follower_record_skipped", follower=self.name, topic=self.topic,
                                    partition=tp.partition, offset=msg.offset,
                                    error=f"{type(exc).__name__}: {exc}"[:300])
                    self.positions[tp.partition] = msg.offset + 1
                    self.handled += 1

    def reached(self, partition: int, offset: int) -> bool:
        """True once the record at ``offset`` of ``partition`` has been handled."""
        return self.positions.get(partition, -1) > offset
