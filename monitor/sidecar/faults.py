"""The record's fault: what the consume loop does with a record that cannot be processed, so none can stop it.

A record that stopped the loop would stop it again on every restart and pin its partition, so the three ways a
record can be at fault each end in a dead letter and the loop moving past it (:mod:`monitor.sidecar.consumer`
keeps the loop, the commits and the environment's faults; this module the record's):

* :class:`DeadLetters` writes rejected records to the dead-letter topic and waits for the broker's acks, in
  slices that check the abandon event; a dead letter the producer or broker refuses because of the record (too
  large, a bad header) is replaced by the smallest one (:func:`~monitor.sidecar.deadletter.headers_only`);
* :class:`PoisonGuard` counts, per partition, how often the same offset failed processing in a row; at
  ``poison_max_attempts`` the record is dead-lettered as ``processing_error`` instead of retried again;
* :class:`UndecodableRecords` handles a record the Kafka client cannot deserialise (``undecodable_record``):
  it finds the partition with a throwaway consumer, parks it, dead-letters the coordinates and seeks past.

Log lines keep the consumer's logger name: they are the consume loop's events, wherever the code sits.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    UnsupportedCodecError,
)

from monitor.logs import get_logger
from monitor.settings import Settings
from monitor.sidecar.deadletter import DeadLetter, dead_letter, headers_only, source
from monitor.sidecar.kafka_client import kafka_client_config
from monitor.sidecar.metrics import Metrics
from monitor.sidecar.pipeline import Record, Rejected

log = get_logger("framewatch.consumer")

#: Longest single blocking call the loop makes; longer waits are loops of these that check the stop event.
WAIT_SLICE_S = 1.0
#: How long one dead-letter write may take in total before the batch is rewound and retried.
DEAD_LETTER_DEADLINE_S = 20.0
LOCATE_ATTEMPTS = 5

#: Errors from poll() that belong to one record, not to the broker: skip past the record.
RECORD_ERRORS: tuple[type[BaseException], ...] = (CorruptRecordError, InvalidRecordError, UnsupportedCodecError,
                                                  UnicodeError, ValueError, TypeError, IndexError)
#: Errors from a dead-letter send that the record's size or content caused: write a smaller dead letter.
REFUSALS: tuple[type[BaseException], ...] = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError,
                                             CorruptRecordError, TypeError, ValueError, UnicodeError)


class DeadLetters:
    """The dead-letter topic's writer. ``beat`` keeps the loop's heartbeat fresh while it waits for acks."""

    def __init__(self, settings: Settings, metrics: Metrics, stop_event: threading.Event,
                 abandon_event: threading.Event, beat: Callable[[], None]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stop_event = stop_event
        self.abandon_event = abandon_event
        self.beat = beat

    def write(self, producer: KafkaProducer, rejected: list[Rejected]) -> bool:
        """Write every rejected record to the dead-letter topic and wait for the acks.

        False only for a failure outside the records (broker down, stop requested): the caller rewinds. A refusal
        caused by a record (too large, bad header) is answered by a smaller dead letter for that record.
        """
        letters = [dead_letter(r, self.settings.dlq_max_value_bytes) for r in rejected]
        outcomes = self._send_and_wait(producer, letters)
        if outcomes is None:
            return False
        for i, error in enumerate(outcomes):
            if error is None:
                continue
            if not isinstance(error, REFUSALS):
                log.error("dead_letter_write_failed", error=f"{type(error).__name__}: {error}", count=len(rejected))
                return False
            log.warning("dead_letter_refused_writing_headers_only", kafka=source(rejected[i]),
                        error=f"{type(error).__name__}: {str(error)[:200]}")
            letters[i] = headers_only(letters[i], rejected[i], f"{type(error).__name__}")
            retried = self._send_and_wait(producer, [letters[i]])
            if retried is None or retried[0] is not None:
                err = retried[0] if retried else None
                log.error("dead_letter_write_failed", error=f"{type(err).__name__}: {err}" if err else "timeout",
                          count=1, kafka=source(rejected[i]))
                return False
        for r, letter in zip(rejected, letters, strict=True):
            self.metrics.events_dead_lettered.labels(r.reason).inc()
            log.warning("event_dead_lettered", reason=r.reason, detail=r.detail[:200], kafka=source(r),
                        truncated=letter.truncated, bytes=len(letter.value))
        return True

    def _send_and_wait(self, producer: KafkaProducer,
                       letters: list[DeadLetter]) -> list[BaseException | None] | None:
        """Send and wait in short slices; per letter None (acknowledged) or its error; None if out of time."""
        futures: list[Any] = []
        errors: list[BaseException | None] = []
        for letter in letters:
            try:
                futures.append(producer.send(self.settings.dlq_topic, value=letter.value, key=letter.key,
                                             headers=letter.headers))
                errors.append(None)
            except Exception as exc:  # noqa: BLE001 - sorted below: the record's fault or the broker's
                futures.append(None)
                errors.append(exc)
        deadline = time.monotonic() + DEAD_LETTER_DEADLINE_S
        while not all(f is None or f.is_done for f in futures):
            self.beat()
            if self.abandon_event.is_set() or time.monotonic() > deadline:
                log.error("dead_letter_write_timed_out", pending=sum(1 for f in futures if f and not f.is_done),
                          stopping=self.stop_event.is_set())
                return None
            with contextlib.suppress(Exception):
                producer.flush(timeout=WAIT_SLICE_S)
        for i, fut in enumerate(futures):
            if fut is not None and fut.failed():
                errors[i] = fut.exception
        return errors


class PoisonGuard:
    """Per partition, the offset that failed processing last and how often in a row (one entry a partition)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._failures: dict[tuple[str, int], tuple[int, int]] = {}

    def passed(self, record: Record) -> None:
        """The record was processed: its partition's count starts again."""
        self._failures.pop((record.topic, record.partition), None)

    def failed(self, record: Record, exc: BaseException) -> Rejected | None:
        """Count a failure: the record's dead letter once it failed ``limit`` times in a row, else None (retry)."""
        tp = (record.topic, record.partition)
        last_offset, count = self._failures.get(tp, (record.offset, 0))
        attempts = count + 1 if last_offset == record.offset else 1
        if attempts >= self.limit:
            self._failures.pop(tp, None)
            log.error("poison_record_dead_lettered", kafka=record.coordinates, attempts=attempts,
                      error=type(exc).__name__)
            return Rejected(record, "processing_error",
                            f"failed {attempts} times in a row: {type(exc).__name__}: {exc}"[:300])
        self._failures[tp] = (record.offset, attempts)
        log.warning("record_processing_failed_will_retry", kafka=record.coordinates, attempt=attempts, of=self.limit,
                    error=type(exc).__name__)
        return None


class UndecodableRecords:
    """Records poll() raised on: located, parked, dead-lettered by coordinates, then skipped and committed."""

    def __init__(self, settings: Settings, dead_letters: DeadLetters, stop_event: threading.Event,
                 beat: Callable[[], None]) -> None:
        self.settings = settings
        self.dead_letters = dead_letters
        self.stop_event = stop_event
        self.beat = beat
        self.pending: list[Rejected] = []  # undecodable records whose dead letters are not written yet
        self._runs: dict[tuple[str, int], tuple[int, int]] = {}  # partition -> (first, last) skipped

    def skip(self, consumer: KafkaConsumer, exc: BaseException) -> bool:
        """poll() raised on a record it could not deserialise: park its partition and note its dead letter.

        The main consumer must not poll again before the seek: kafka-python 3.0 spins forever on a partition
        whose record iterator raised, if its position still points at that record. The client does not say
        which partition raised, so every assigned partition whose next record is undecodable is skipped.
        False when no partition could be located: the caller reconnects (starts from the committed offsets).
        """
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
        located: list[tuple[TopicPartition, int]] | None = None
        for _ in range(LOCATE_ATTEMPTS):
            self.beat()
            located = self._locate(consumer)
            if located or self.stop_event.wait(1.0):
                break
        if not located:
            # Without a location the client's state cannot be trusted to move on: start from the committed offsets.
            log.error("undecodable_record_not_located_reconnecting", error=error)
            self.pending = []
            return False
        for tp, offset in located:
            consumer.pause(tp)  # parks the broken fetch until the dead letter is written
            detail = f"the Kafka client could not deserialise it: {error}"
            key = (tp.topic, tp.partition)
            first = self._runs.get(key)
            if first is not None and first[1] == offset - 1:
                # kafka-python decodes a record batch front to back and cannot resume after a bad record, so the
                # records behind it in the same batch fail too; their bytes stay in the input topic for replay.
                detail = f"in the record batch of undecodable offset {first[0]}, which the client cannot read past"
                self._runs[key] = (first[0], offset)
            else:
                self._runs[key] = (offset, offset)
            self.pending.append(Rejected(Record(tp.topic, tp.partition, offset, None), "undecodable_record", detail))
        return True

    def finish(self, consumer: KafkaConsumer, producer: KafkaProducer,
               commit: Callable[[list[Record]], None]) -> bool:
        """Dead-letter the undecodable records, then seek past them and commit; False while that cannot be done."""
        assigned = consumer.assignment()
        # revoked meanwhile: the partition's new owner meets the record itself
        pending = [r for r in self.pending if TopicPartition(r.record.topic, r.record.partition) in assigned]
        if pending and not self.dead_letters.write(producer, pending):
            return False
        self.pending = []
        for rejected in pending:
            record = rejected.record
            tp = TopicPartition(record.topic, record.partition)
            consumer.seek(tp, record.offset + 1)
            consumer.resume(tp)
            log.warning("undecodable_record_skipped", kafka=source(rejected), error=rejected.detail)
        if pending:
            commit([r.record for r in pending])
        return True

    def _locate(self, consumer: KafkaConsumer) -> list[tuple[TopicPartition, int]] | None:
        """Assigned partitions whose next record cannot be deserialised, found with a throwaway consumer.

        The record is the one at the partition's position (everything before it was returned), so each
        partition is read from the main consumer's position by a fresh consumer outside the group. None when
        the probe itself failed (broker trouble).
        """
        try:
            assigned = sorted(consumer.assignment(), key=lambda t: (t.topic, t.partition))
            positions = {tp: consumer.position(tp, timeout_ms=2000) for tp in assigned}
        except Exception:  # noqa: BLE001
            return None
        if len(assigned) == 1:
            return [(assigned[0], positions[assigned[0]])]
        common = kafka_client_config(self.settings)
        found: list[tuple[TopicPartition, int]] = []
        for tp in assigned:
            probe = None
            try:
                probe = KafkaConsumer(**common, group_id=None, enable_auto_commit=False)
                probe.assign([tp])
                probe.seek(tp, positions[tp])
                for _ in range(4):  # a fresh fetch may take a round trip or two
                    if probe.poll(timeout_ms=500, max_records=1):
                        break
            except RECORD_ERRORS:
                found.append((tp, positions[tp]))
            except Exception as exc:  # noqa: BLE001 - broker trouble: not located this time
                log.warning("undecodable_record_probe_failed", error=type(exc).__name__)
                return None
            finally:
                if probe is not None:
                    with contextlib.suppress(Exception):
                        probe.close(autocommit=False, timeout_ms=1000)
        return found
