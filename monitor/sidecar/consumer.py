"""The Kafka loop: poll a batch, run the pipeline, dead-letter the malformed, commit, repeat.

Delivery is at-least-once: offsets are committed only after every record of the batch has been analysed
and recorded, or dead-lettered with the dead-letter write acknowledged by the broker. A crash (even
``kill -9``) between processing and commit means the batch is processed again by whoever owns the
partition next; nothing is lost. Works against Apache Kafka and any Kafka-compatible broker: only the
plain consumer-group protocol is used.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from monitor.logs import get_logger
from monitor.settings import Settings
from monitor.sidecar.metrics import Metrics
from monitor.sidecar.pipeline import Pipeline, Record, Rejected, SinkUnavailable

log = get_logger("framewatch.consumer")

LAG_INTERVAL_S = 5.0
BACKOFF_MAX_S = 30.0


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


@dataclass
class ConsumerState:
    """What /healthz and /readyz read. Written by the loop thread only."""

    heartbeat: float = field(default_factory=time.monotonic)
    ready: bool = False
    broker_ok: bool = False
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
        self._stop = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._last_lag = 0.0
        self._lag_series: set[tuple[str, str]] = set()

    def stop(self) -> None:
        """Ask the loop to finish its batch, commit and leave the group (SIGTERM handler calls this)."""
        self._stop.set()

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> None:
        """Connect (retrying with backoff), then consume until :meth:`stop`."""
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

    def _connect(self) -> bool:
        delay = 0.5
        common = kafka_client_config(self.settings)
        while not self._stop.is_set():
            self.state.heartbeat = time.monotonic()
            try:
                self._producer = KafkaProducer(**common, acks="all", linger_ms=5, retries=5)
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
                self._consumer.close(autocommit=False)  # leaves the group: partitions move at once
            except Exception as exc:  # noqa: BLE001
                log.warning("consumer_close_failed", error=str(exc))
            self._consumer = None
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception as exc:  # noqa: BLE001
                log.warning("producer_close_failed", error=str(exc))
            self._producer = None

    # -- one iteration ---------------------------------------------------------------------------

    def _poll_once(self) -> None:
        assert self._consumer is not None
        try:
            polled = self._consumer.poll(timeout_ms=self.settings.kafka_poll_timeout_ms,
                                         max_records=self.settings.kafka_max_poll_records)
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
            try:
                result = self.pipeline.process(records)
            except SinkUnavailable as exc:  # e.g. the flagged topic is unwritable: redo the batch later
                self._note_broker_error(exc)
                self._rewind(records)
                return
            if result.rejected and not self._dead_letter(result.rejected):
                self._rewind(records)  # DLQ write failed: do not commit past them; retry the batch
                return
            self._commit(records)

    def _dead_letter(self, rejected: list[Rejected]) -> bool:
        assert self._producer is not None
        futures = []
        for r in rejected:
            headers = list(r.record.headers) + [
                ("framewatch.reason", r.reason.encode()),
                ("framewatch.detail", r.detail.encode("utf-8", "replace")[:500]),
                ("framewatch.source", f"{r.record.topic}:{r.record.partition}:{r.record.offset}".encode()),
            ]
            futures.append((r, self._producer.send(self.settings.dlq_topic, value=r.record.value,
                                                   key=r.record.key, headers=headers)))
        try:
            self._producer.flush(timeout=30)
            for _, fut in futures:
                fut.get(timeout=1)
        except Exception as exc:  # noqa: BLE001
            log.error("dead_letter_write_failed", error=f"{type(exc).__name__}: {exc}", count=len(rejected))
            return False
        for r, _ in futures:
            self.metrics.events_dead_lettered.labels(r.reason).inc()
            log.warning("event_dead_lettered", reason=r.reason, detail=r.detail[:200],
                        kafka=f"{r.record.topic}:{r.record.partition}:{r.record.offset}")
        return True

    def _commit(self, records: list[Record]) -> None:
        assert self._consumer is not None
        last: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            last[tp] = max(last.get(tp, -1), r.offset)
        offsets = {tp: OffsetAndMetadata(off + 1, "", -1) for tp, off in last.items()}
        try:
            self._consumer.commit(offsets)
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
        self.metrics.consumer_ready.set(1 if ready else 0)

    def _note_broker_error(self, exc: BaseException) -> None:
        if self.state.broker_ok:
            log.warning("kafka_broker_unreachable", error=f"{type(exc).__name__}: {exc}")
        self.state.broker_ok = False
        self.state.last_error = f"{type(exc).__name__}: {exc}"
        self._set_ready(False)
