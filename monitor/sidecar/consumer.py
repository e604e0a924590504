"""The Kafka loop: poll a batch, run the pipeline, dead-letter the malformed, commit, repeat.

Delivery is at-least-once: offsets are committed only after every record of the batch has been analysed
and recorded, or dead-lettered with the dead-letter write acknowledged by the broker. A crash (even
``kill -9``) between processing and commit means the batch is processed again by whoever owns the
partition next; nothing is lost. Works against Apache Kafka and any Kafka-compatible broker: only the
plain consumer-group protocol is used.

No record can stop the loop, which is the other half of "nothing is lost": a record that stopped it would
stop it again on every restart and pin its partition. So every failure is sorted into one of two kinds:

* **the record's fault** - it does not decode (:mod:`monitor.sidecar.events`), the client library cannot
  deserialise it (``undecodable_record``), the producer or broker refuses its dead letter (a smaller one is
  written instead, :mod:`monitor.sidecar.deadletter`), or processing it fails ``poison_max_attempts`` times in a
  row (``processing_error``): it is dead-lettered and the loop moves past it;
* **the environment's fault** - the broker or the flagged topic is unreachable: nothing is committed, the batch is
  rewound and retried, and readiness says so.

Every wait inside the loop is cut into slices of at most :data:`WAIT_SLICE_S` that check an event, so a SIGTERM
during an outage is honoured within seconds, and readiness is also kept by a separate thread
(:meth:`SidecarConsumer._watch_broker`) so it stays true while the loop waits on a send. Two events, because a
SIGTERM with the broker up should *finish* the batch (acks take milliseconds; abandoning it would leave half its
flagged and evidence records written, to be written again by the partition's next owner), while one with the broker
gone must not wait for it: ``stop_event`` ends the loop after the batch; ``abandon_event`` makes every wait on the
broker (dead letters here, the flagged and evidence publishers) give up. It is set :data:`STOP_DRAIN_S` after the
stop, or at once when the probe says the broker is unreachable.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    UnsupportedCodecError,
)
from kafka.structs import OffsetAndMetadata

from monitor.logs import get_logger
from monitor.settings import Settings
from monitor.sidecar.deadletter import DeadLetter, dead_letter, headers_only, source
from monitor.sidecar.metrics import Metrics
from monitor.sidecar.pipeline import Pipeline, Record, Rejected, SinkUnavailable

log = get_logger("framewatch.consumer")

LAG_INTERVAL_S = 5.0
BACKOFF_MAX_S = 30.0
#: Longest single blocking call the loop makes; longer waits are loops of these that check the stop event.
WAIT_SLICE_S = 1.0
#: How long one dead-letter write may take in total before the batch is rewound and retried.
DEAD_LETTER_DEADLINE_S = 20.0
#: send() blocks at most this long for metadata when the broker is gone.
SEND_MAX_BLOCK_MS = 5000
COMMIT_TIMEOUT_MS = 5000
CLOSE_TIMEOUT_MS = 3000
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 1.0
#: After a stop, how long waits on the broker may still finish the batch before they are abandoned.
STOP_DRAIN_S = 5.0
LOCATE_ATTEMPTS = 5

#: Errors from poll() that belong to one record, not to the broker: skip past the record.
RECORD_ERRORS: tuple[type[BaseException], ...] = (CorruptRecordError, InvalidRecordError, UnsupportedCodecError,
                                                  UnicodeError, ValueError, TypeError, IndexError)
#: Errors from a dead-letter send that the record's size or content caused: write a smaller dead letter.
REFUSALS: tuple[type[BaseException], ...] = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError,
                                             CorruptRecordError, TypeError, ValueError, UnicodeError)


def kafka_client_config(settings: Settings) -> dict[str, Any]:
    """Connection settings shared by the consumer and the producers (SASL/SSL included)."""
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.kafka_bootstrap_servers.split(",") if s.strip()],
        "client_id": settings.kafka_client_id,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_sasl_mechanism:
        config.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                      sasl_plain_username=settings.kafka_sasl_username,
                      sasl_plain_password=settings.kafka_sasl_password)
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, f"kafka_{key}")
        if value:
            config[key] = value
    return config


def broker_reachable(bootstrap: Iterable[str], timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when any bootstrap server accepts a TCP connection: the loop-independent half of readiness."""
    for server in bootstrap:
        host, _, port = server.rpartition(":")
        host = host.strip("[]") or "localhost"
        try:
            with socket.create_connection((host, int(port or 9092)), timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


@dataclass
class ConsumerState:
    """What /healthz and /readyz read. Written by the loop thread, ``broker_probe_ok`` by the probe thread."""

    heartbeat: float = field(default_factory=time.monotonic)
    ready: bool = False
    broker_ok: bool = False
    broker_probe_ok: bool = True
    stopped: bool = False
    last_error: str | None = None


class SidecarConsumer:
    def __init__(self, settings: Settings, pipeline: Pipeline, metrics: Metrics,
                 on_batch: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        self.on_batch = on_batch  # e.g. registry hot-reload check, once per loop iteration
        self.state = ConsumerState()
        self.stop_event = threading.Event()  # ends the loop once the batch is done
        self.abandon_event = threading.Event()  # shared with every publisher the batch waits on (see module doc)
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._last_lag = 0.0
        self._lag_series: set[tuple[str, str]] = set()
        # (topic, partition) -> (offset, consecutive failures): the poison-pill guard, one entry per partition
        self._failures: dict[tuple[str, int], tuple[int, int]] = {}
        self._pending_skips: list[Rejected] = []  # undecodable records whose dead letters are not written yet
        self._undecodable_run: dict[tuple[str, int], tuple[int, int]] = {}  # partition -> (first, last) skipped

    def stop(self) -> None:
        """Ask the loop to finish its batch, commit and leave the group (SIGTERM handler calls this).

        Waits on the broker get :data:`STOP_DRAIN_S` to finish the batch, none if the broker is known unreachable.
        """
        if self.stop_event.is_set():
            return
        self.stop_event.set()
        if not self.state.broker_probe_ok:
            self.abandon_event.set()
            return
        timer = threading.Timer(STOP_DRAIN_S, self.abandon_event.set)
        timer.daemon = True
        timer.start()

    @property
    def _stop(self) -> threading.Event:
        return self.stop_event

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> None:
        """Connect (retrying with backoff), then consume until :meth:`stop`."""
        probe = threading.Thread(target=self._watch_broker, name="broker-probe", daemon=True)
        probe.start()
        try:
            if not self._connect():
                return
            while not self._stop.is_set():
                self.state.heartbeat = time.monotonic()
                if self.on_batch:
                    self.on_batch()
                self._poll_once()
        finally:
            self._close()

    def _watch_broker(self) -> None:
        """Readiness that does not depend on the loop: a loop blocked on a send cannot report the outage."""
        bootstrap = kafka_client_config(self.settings)["bootstrap_servers"]
        while not self.abandon_event.wait(PROBE_INTERVAL_S) and not self.state.stopped:
            ok = broker_reachable(bootstrap)
            if not ok and self._stop.is_set():
                self.abandon_event.set()  # stopping with the broker gone: nothing to drain
            if ok != self.state.broker_probe_ok and not ok:
                log.warning("kafka_broker_unreachable", source="probe", bootstrap=bootstrap)
            elif ok != self.state.broker_probe_ok:
                log.info("kafka_broker_reachable_again", source="probe")
            self.state.broker_probe_ok = ok
            if not ok:
                self.state.last_error = "broker unreachable: no bootstrap server accepts connections"
                self.metrics.consumer_ready.set(0)
            elif self.state.ready and self.state.broker_ok:
                self.metrics.consumer_ready.set(1)

    def _connect(self) -> bool:
        delay = 0.5
        common = kafka_client_config(self.settings)
        while not self._stop.is_set():
            self.state.heartbeat = time.monotonic()
            try:
                self._producer = KafkaProducer(**common, acks="all", linger_ms=5, retries=5,
                                               max_request_size=self.settings.kafka_max_request_size,
                                               max_block_ms=SEND_MAX_BLOCK_MS)
                self._consumer = KafkaConsumer(
                    self.settings.kafka_topic,
                    **common,
                    group_id=self.settings.kafka_group_id,
                    enable_auto_commit=False,
                    auto_offset_reset=self.settings.kafka_auto_offset_reset,
                    max_poll_records=self.settings.kafka_max_poll_records,
                    session_timeout_ms=self.settings.kafka_session_timeout_ms,
                    heartbeat_interval_ms=max(self.settings.kafka_session_timeout_ms // 3, 100),
                )
                self.state.broker_ok = True
                log.info("kafka_connected", bootstrap=common["bootstrap_servers"], topic=self.settings.kafka_topic,
                         group_id=self.settings.kafka_group_id)
                return True
            except (KafkaError, OSError) as exc:  # kafka-python 3 raises KafkaTimeoutError on bootstrap
                self.state.broker_ok = False
                self.state.last_error = f"{type(exc).__name__}: {exc}"
                self._close_clients()
                log.warning("kafka_unreachable_retrying", error=self.state.last_error, retry_in_s=round(delay, 1))
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        return False

    def _close(self) -> None:
        self.state.ready = False
        self.metrics.consumer_ready.set(0)
        self._close_clients()
        self.state.stopped = True
        log.info("consumer_stopped")

    def _close_clients(self) -> None:
        if self._consumer is not None:
            try:
                # leaves the group: partitions move at once; bounded, so SIGTERM with the broker gone stays short
                self._consumer.close(autocommit=False, timeout_ms=CLOSE_TIMEOUT_MS)
            except Exception as exc:  # noqa: BLE001
                log.warning("consumer_close_failed", error=str(exc))
            self._consumer = None
        if self._producer is not None:
            try:
                self._producer.close(timeout=2)
            except Exception as exc:  # noqa: BLE001
                log.warning("producer_close_failed", error=str(exc))
            self._producer = None

    # -- one iteration ---------------------------------------------------------------------------

    def _poll_once(self) -> None:
        assert self._consumer is not None
        if self._pending_skips and not self._finish_skips():
            self._stop.wait(1.0)
            return
        try:
            polled = self._consumer.poll(timeout_ms=self.settings.kafka_poll_timeout_ms,
                                         max_records=self.settings.kafka_max_poll_records)
        except RECORD_ERRORS as exc:
            self._skip_undecodable(exc)
            return
        except KafkaError as exc:
            self._note_broker_error(exc)
            self._stop.wait(1.0)
            return
        self._update_readiness_and_lag()
        records = [
            Record(r.topic, r.partition, r.offset, r.value, list(r.headers or ()), r.key)
            for batch in polled.values() for r in batch
        ]
        if not records:
            return
        self.metrics.events_consumed.inc(len(records))
        with self.metrics.batch_seconds.time():
            self._handle(records)

    def _handle(self, records: list[Record]) -> None:
        try:
            result = self.pipeline.process(records)
        except SinkUnavailable as exc:  # e.g. the flagged topic is unwritable: redo the batch later
            self._note_broker_error(exc)
            self._rewind(records)
            return
        except Exception as exc:  # noqa: BLE001 - find the record that does this; the guard decides its fate
            log.error("batch_failed_retrying_record_by_record", records=len(records), error=type(exc).__name__)
            self._handle_singly(records)
            return
        for r in records:
            self._failures.pop((r.topic, r.partition), None)
        self._finish(records, result.rejected, rewind=records)

    def _finish(self, done: list[Record], rejected: list[Rejected], rewind: list[Record]) -> bool:
        """Dead-letter, then commit ``done``; if the dead letters cannot be written, rewind to ``rewind``."""
        if rejected and not self._dead_letter(rejected):
            self._rewind(rewind)  # DLQ write failed: do not commit past them; retry the batch
            return False
        self._commit(done)
        return True

    def _handle_singly(self, records: list[Record]) -> None:
        """One record at a time, so one failing record holds up only itself (and what follows it)."""
        limit = self.settings.poison_max_attempts
        done: list[Record] = []
        rejected: list[Rejected] = []
        rest: list[Record] = []
        for i, record in enumerate(records):
            tp = (record.topic, record.partition)
            try:
                result = self.pipeline.process([record])
            except SinkUnavailable as exc:
                self._note_broker_error(exc)
                rest = records[i:]
                break
            except Exception as exc:  # noqa: BLE001
                last_offset, count = self._failures.get(tp, (record.offset, 0))
                attempts = count + 1 if last_offset == record.offset else 1
                kafka = f"{record.topic}:{record.partition}:{record.offset}"
                if attempts >= limit:
                    self._failures.pop(tp, None)
                    log.error("poison_record_dead_lettered", kafka=kafka, attempts=attempts,
                              error=type(exc).__name__)
                    rejected.append(Rejected(record, "processing_error",
                                             f"failed {attempts} times in a row: {type(exc).__name__}: {exc}"[:300]))
                    done.append(record)
                    continue
                self._failures[tp] = (record.offset, attempts)
                log.warning("record_processing_failed_will_retry", kafka=kafka, attempt=attempts, of=limit,
                            error=type(exc).__name__)
                rest = records[i:]
                break
            self._failures.pop(tp, None)
            done.append(record)
            rejected.extend(result.rejected)
        if done and not self._finish(done, rejected, rewind=records):
            return
        if rest:
            self._rewind(rest)

    # -- dead letters ----------------------------------------------------------------------------

    def _dead_letter(self, rejected: list[Rejected]) -> bool:
        """Write every rejected record to the dead-letter topic and wait for the acks.

        False only for a failure outside the records (broker down, stop requested): the caller rewinds. A refusal
        caused by a record (too large, bad header) is answered by a smaller dead letter for that record.
        """
        assert self._producer is not None
        letters = [dead_letter(r, self.settings.dlq_max_value_bytes) for r in rejected]
        outcomes = self._send_and_wait(letters)
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
            retried = self._send_and_wait([letters[i]])
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

    def _send_and_wait(self, letters: list[DeadLetter]) -> list[BaseException | None] | None:
        """Send and wait in short slices; per letter None (acknowledged) or its error; None if out of time."""
        assert self._producer is not None
        futures: list[Any] = []
        errors: list[BaseException | None] = []
        for letter in letters:
            try:
                futures.append(self._producer.send(self.settings.dlq_topic, value=letter.value, key=letter.key,
                                                   headers=letter.headers))
                errors.append(None)
            except Exception as exc:  # noqa: BLE001 - sorted below: the record's fault or the broker's
                futures.append(None)
                errors.append(exc)
        deadline = time.monotonic() + DEAD_LETTER_DEADLINE_S
        while not all(f is None or f.is_done for f in futures):
            self.state.heartbeat = time.monotonic()
            if self.abandon_event.is_set() or time.monotonic() > deadline:
                log.error("dead_letter_write_timed_out", pending=sum(1 for f in futures if f and not f.is_done),
                          stopping=self._stop.is_set())
                return None
            with contextlib.suppress(Exception):
                self._producer.flush(timeout=WAIT_SLICE_S)
        for i, fut in enumerate(futures):
            if fut is not None and fut.failed():
                errors[i] = fut.exception
        return errors

    # -- records the client cannot deserialise -------------------------------------------------------

    def _skip_undecodable(self, exc: BaseException) -> None:
        """poll() raised on a record it could not deserialise: dead-letter its coordinates and seek past it.

        The main consumer must not poll again before the seek: kafka-python 3.0 spins forever on a partition
        whose record iterator raised, if its position still points at that record. The client does not say
        which partition raised, so every assigned partition whose next record is undecodable is skipped.
        """
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
        located: list[tuple[TopicPartition, int]] | None = None
        for _ in range(LOCATE_ATTEMPTS):
            self.state.heartbeat = time.monotonic()
            located = self._locate_undecodable()
            if located or self._stop.wait(1.0):
                break
        if not located:
            # Without a location the client's state cannot be trusted to move on: start from the committed offsets.
            log.error("undecodable_record_not_located_reconnecting", error=error)
            self._pending_skips = []
            self._close_clients()
            self._connect()
            return
        assert self._consumer is not None
        for tp, offset in located:
            self._consumer.pause(tp)  # parks the broken fetch until the dead letter is written
            detail = f"the Kafka client could not deserialise it: {error}"
            key = (tp.topic, tp.partition)
            first = self._undecodable_run.get(key)
            if first is not None and first[1] == offset - 1:
                # kafka-python decodes a record batch front to back and cannot resume after a bad record, so the
                # records behind it in the same batch fail too; their bytes stay in the input topic for replay.
                detail = f"in the record batch of undecodable offset {first[0]}, which the client cannot read past"
                self._undecodable_run[key] = (first[0], offset)
            else:
                self._undecodable_run[key] = (offset, offset)
            self._pending_skips.append(Rejected(Record(tp.topic, tp.partition, offset, None), "undecodable_record",
                                                detail))
        self._finish_skips()

    def _finish_skips(self) -> bool:
        """Dead-letter the undecodable records, then seek past them and commit; False while that cannot be done."""
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        # revoked meanwhile: the partition's new owner meets the record itself
        pending = [r for r in self._pending_skips
                   if TopicPartition(r.record.topic, r.record.partition) in assigned]
        if pending and not self._dead_letter(pending):
            return False
        self._pending_skips = []
        for rejected in pending:
            record = rejected.record
            tp = TopicPartition(record.topic, record.partition)
            self._consumer.seek(tp, record.offset + 1)
            self._consumer.resume(tp)
            log.warning("undecodable_record_skipped", kafka=source(rejected), error=rejected.detail)
        if pending:
            self._commit([r.record for r in pending])
        return True

    def _locate_undecodable(self) -> list[tuple[TopicPartition, int]] | None:
        """Assigned partitions whose next record cannot be deserialised, found with a throwaway consumer.

        The record is the one at the partition's position (everything before it was returned), so each
        partition is read from the main consumer's position by a fresh consumer outside the group. None when
        the probe itself failed (broker trouble).
        """
        assert self._consumer is not None
        try:
            assigned = sorted(self._consumer.assignment(), key=lambda t: (t.topic, t.partition))
            positions = {tp: self._consumer.position(tp, timeout_ms=2000) for tp in assigned}
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

    # -- offsets ---------------------------------------------------------------------------------

    def _commit(self, records: list[Record]) -> None:
        assert self._consumer is not None
        last: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            last[tp] = max(last.get(tp, -1), r.offset)
        offsets = {tp: OffsetAndMetadata(off + 1, "", -1) for tp, off in last.items()}
        try:
            self._consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        except Exception as exc:  # noqa: BLE001 - e.g. a rebalance took the partition: it will be redone
            log.warning("commit_failed_batch_will_be_redelivered", error=f"{type(exc).__name__}: {exc}")

    def _rewind(self, records: list[Record]) -> None:
        assert self._consumer is not None
        first: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            first[tp] = min(first.get(tp, r.offset), r.offset)
        for tp, off in first.items():
            if tp in self._consumer.assignment():
                self._consumer.seek(tp, off)
        self._stop.wait(1.0)

    def _update_readiness_and_lag(self) -> None:
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        now = time.monotonic()
        if now - self._last_lag < LAG_INTERVAL_S and self.state.broker_ok:
            self._set_ready(bool(assignment))
            return
        self._last_lag = now
        if not assignment:
            # Not assigned yet (joining) or more replicas than partitions: alive but not consuming.
            for topic, partition in self._lag_series:
                self.metrics.consumer_lag.remove(topic, partition)
            self._lag_series = set()
            self._set_ready(False)
            return
        try:
            ends = self._consumer.end_offsets(list(assignment), timeout_ms=2000)
            positions = {tp: self._consumer.position(tp, timeout_ms=1000) for tp in ends}
        except Exception as exc:  # noqa: BLE001 - broker gone: report not ready, keep the loop alive
            self._note_broker_error(exc)
            return
        self.state.broker_ok = True
        for topic, partition in self._lag_series - {(tp.topic, str(tp.partition)) for tp in ends}:
            # Revoked in a rebalance: its new owner reports it now; a stale value would raise false alerts.
            self.metrics.consumer_lag.remove(topic, partition)
        self._lag_series = {(tp.topic, str(tp.partition)) for tp in ends}
        for tp, end in ends.items():
            if positions[tp] is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(end - positions[tp], 0))
        self._set_ready(True)

    def _set_ready(self, ready: bool) -> None:
        if ready != self.state.ready:
            log.info("consumer_ready" if ready else "consumer_not_ready")
        self.state.ready = ready
        self.metrics.consumer_ready.set(1 if ready and self.state.broker_probe_ok else 0)

    def _note_broker_error(self, exc: BaseException) -> None:
        if self.state.broker_ok:
            log.warning("kafka_broker_unreachable", error=f"{type(exc).__name__}: {exc}")
        self.state.broker_ok = False
        self.state.last_error = f"{type(exc).__name__}: {exc}"
        self._set_ready(False)
