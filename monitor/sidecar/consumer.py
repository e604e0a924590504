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
broker (dead letters, the flagged and evidence publishers) give up. It is set :data:`STOP_DRAIN_S` after the
stop, or at once when the probe says the broker is unreachable.

This module is the loop and the environment's faults (connect, poll, commit, rewind, readiness); the record's
faults are :mod:`monitor.sidecar.faults` (dead letters, the poison-pill guard, undecodable records), and how every
client connects is :mod:`monitor.sidecar.kafka_client`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from monitor.logs import get_logger
from monitor.settings import Settings
from monitor.sidecar.faults import RECORD_ERRORS, WAIT_SLICE_S, DeadLetters, PoisonGuard, UndecodableRecords
from monitor.sidecar.kafka_client import broker_reachable, kafka_client_config
from monitor.sidecar.metrics import Metrics
from monitor.sidecar.pipeline import Pipeline, Record, Rejected, SinkUnavailable

log = get_logger("framewatch.consumer")

__all__ = ["WAIT_SLICE_S", "ConsumerState", "SidecarConsumer", "broker_reachable", "kafka_client_config"]

LAG_INTERVAL_S = 5.0
BACKOFF_MAX_S = 30.0
#: send() blocks at most this long for metadata when the broker is gone.
SEND_MAX_BLOCK_MS = 5000
COMMIT_TIMEOUT_MS = 5000
CLOSE_TIMEOUT_MS = 3000
PROBE_INTERVAL_S = 1.0
#: After a stop, how long waits on the broker may still finish the batch before they are abandoned.
STOP_DRAIN_S = 5.0


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
        # the record's faults (monitor.sidecar.faults)
        self._dead_letters = DeadLetters(settings, metrics, self.stop_event, self.abandon_event, self._beat)
        self._poison = PoisonGuard(settings.poison_max_attempts)
        self._undecodable = UndecodableRecords(settings, self._dead_letters, self.stop_event, self._beat)

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

    def _beat(self) -> None:
        """The loop is alive (/healthz): called by every wait inside it."""
        self.state.heartbeat = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> None:
        """Connect (retrying with backoff), then consume until :meth:`stop`."""
        probe = threading.Thread(target=self._watch_broker, name="broker-probe", daemon=True)
        probe.start()
        try:
            if not self._connect():
                return
            while not self._stop.is_set():
                self._beat()
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
            self._beat()
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
                    check_crcs=self.settings.kafka_check_crcs,
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
        if self._undecodable.pending and not self._finish_skips():
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
            self._poison.passed(r)
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
        done: list[Record] = []
        rejected: list[Rejected] = []
        rest: list[Record] = []
        for i, record in enumerate(records):
            try:
                result = self.pipeline.process([record])
            except SinkUnavailable as exc:
                self._note_broker_error(exc)
                rest = records[i:]
                break
            except Exception as exc:  # noqa: BLE001 - the poison-pill guard decides: retry, or dead-letter
                poisoned = self._poison.failed(record, exc)
                if poisoned is None:
                    rest = records[i:]
                    break
                rejected.append(poisoned)
                done.append(record)
                continue
            self._poison.passed(record)
            done.append(record)
            rejected.extend(result.rejected)
        if done and not self._finish(done, rejected, rewind=records):
            return
        if rest:
            self._rewind(rest)

    # -- the record's faults (monitor.sidecar.faults) -------------------------------------------------

    def _dead_letter(self, rejected: list[Rejected]) -> bool:
        """Dead letters written and acknowledged; False (the caller rewinds) for a failure outside the records."""
        assert self._producer is not None
        return self._dead_letters.write(self._producer, rejected)

    def _skip_undecodable(self, exc: BaseException) -> None:
        """poll() raised on a record it could not deserialise: dead-letter its coordinates and seek past it."""
        assert self._consumer is not None
        if not self._undecodable.skip(self._consumer, exc):
            self._close_clients()
            self._connect()
            return
        self._finish_skips()

    def _finish_skips(self) -> bool:
        """Dead-letter the undecodable records, then seek past them and commit; False while that cannot be done."""
        assert self._consumer is not None and self._producer is not None
        return self._undecodable.finish(self._consumer, self._producer, self._commit)

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
