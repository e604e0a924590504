"""Off the request path: a bounded queue of finished exchanges, drained by one thread into a Kafka producer.

The proxy only calls :meth:`EventPublisher.offer`, which never blocks: when the queue is full the exchange is
counted as dropped (``queue_full``) and the user's request is not affected. The thread builds the event
(:func:`monitor.tap.exchange.build_event`), encodes it and hands it to kafka-python; the broker's
acknowledgement (or the producer giving up after ``tap_publish_timeout_ms``) is counted from the producer's
callbacks. While no broker can be reached the thread retries with backoff and the queue absorbs the
outage until it is full. Delivery is at-most-once by design: a tap must never hold a user's answer back.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from kafka import KafkaProducer
from kafka.errors import KafkaError

from monitor.logs import get_logger
from monitor.settings import Settings
from monitor.sidecar.kafka_client import kafka_client_config
from monitor.tap.exchange import Exchange, Skipped, build_event
from monitor.tap.metrics import TapMetrics

log = get_logger("framewatch.tap.publisher")

BACKOFF_MAX_S = 30.0
WARN_EVERY_S = 30.0
#: Consecutive failed events after which the producer is closed and made anew (no more often than every
#: RECYCLE_MIN_S). An idempotent producer can get stuck in a state it does not leave by itself, e.g. a
#: producer id the broker no longer knows after a restart; a fresh producer starts over.
RECYCLE_AFTER_FAILURES = 3
RECYCLE_MIN_S = 10.0


class Future(Protocol):
    def add_callback(self, f: Callable[..., Any], *args: Any) -> Any: ...
    def add_errback(self, f: Callable[..., Any], *args: Any) -> Any: ...


class Producer(Protocol):
    """The part of kafka-python's KafkaProducer the publisher uses."""

    def send(self, topic: str, value: bytes, key: bytes) -> Future: ...
    def flush(self, timeout: float | None = None) -> None: ...
    def close(self, timeout: float | None = None) -> None: ...
    def bootstrap_connected(self) -> bool: ...


def kafka_producer(settings: Settings) -> Producer:
    """A producer with the sidecar's connection settings; gives up on a record after tap_publish_timeout_ms."""
    timeout = settings.tap_publish_timeout_ms
    linger = 5
    request_timeout = max(min(30_000, timeout - linger - 1), 100)
    producer: Producer = KafkaProducer(
        **kafka_client_config(settings), acks="all", linger_ms=linger, delivery_timeout_ms=timeout,
        request_timeout_ms=request_timeout, max_block_ms=min(timeout, 5_000), retries=5,
        bootstrap_timeout_ms=min(timeout, 10_000))
    return producer


class EventPublisher:
    def __init__(self, settings: Settings, metrics: TapMetrics,
                 producer_factory: Callable[[Settings], Producer] = kafka_producer) -> None:
        self.settings = settings
        self.metrics = metrics
        self._factory = producer_factory
        self._queue: queue.Queue[Exchange | None] = queue.Queue(maxsize=settings.tap_queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self._last_warning = 0.0
        self._failures_in_row = 0
        self._created_at = 0.0
        metrics.queue_depth.set_function(self._queue.qsize)

    # -- request path ----------------------------------------------------------------------------

    def offer(self, exchange: Exchange) -> None:
        """Queue a finished exchange, or count it dropped; never blocks, never raises."""
        try:
            self._queue.put_nowait(exchange)
        except queue.Full:
            self.metrics.events_dropped.labels("queue_full").inc()
            return
        self.metrics.events_queued.inc()

    def drop(self, reason: str) -> None:
        self.metrics.events_dropped.labels(reason).inc()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> EventPublisher:
        self._thread = threading.Thread(target=self._run, name="tap-publisher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Publish what is queued (up to ``timeout``), then close the producer."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        if self._thread is not None:
            self._thread.join(timeout=max(deadline - time.monotonic(), 0.1))
        # What the thread could not take before the deadline (a broker gone at shutdown) is lost: count it.
        left = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                left += 1
        with contextlib.suppress(queue.Full):  # the sentinel may have been drained with them: the thread still ends
            self._queue.put_nowait(None)
        if left:
            self.metrics.events_dropped.labels("shutdown").inc(left)
            log.warning("tap_events_dropped_at_shutdown", events=left)
        if self._producer is not None:
            try:
                self._producer.flush(timeout=max(deadline - time.monotonic(), 0.1))
                self._producer.close(timeout=1)
            except Exception as exc:  # noqa: BLE001 - shutting down: report, never raise
                log.warning("tap_producer_close_failed", error=type(exc).__name__)
            self._producer = None

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        self._connected()  # at start, not at the first event: the first answer's event is not held up
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._refresh_broker_gauge()
                continue
            if item is None:
                return
            self._recycle_if_stuck()
            producer = self._connected()
            if producer is None:  # stopping before any broker answered
                self.drop("publish_failed")
                continue
            try:
                self._publish(producer, item)
            except Exception as exc:  # noqa: BLE001 - one exchange must never stop the publisher
                self.drop("error")
                log.error("tap_event_build_failed", error=type(exc).__name__, endpoint=item.path)

    def _publish(self, producer: Producer, item: Exchange) -> None:
        event = build_event(item)
        if isinstance(event, Skipped):
            self.drop(event.reason)
            log.debug("tap_exchange_skipped", reason=event.reason, detail=event.detail, endpoint=item.path)
            return
        value = json.dumps(event, ensure_ascii=False).encode()
        if len(value) > self.settings.max_event_bytes:
            self.drop("oversized")
            return
        try:
            future = producer.send(self.settings.kafka_topic, value=value, key=event["event_id"].encode())
        except (KafkaError, OSError) as exc:  # no metadata within max_block_ms, buffer full, ...
            self._failed(exc)
            return
        ended = item.ended_at
        future.add_callback(self._acked, ended)
        future.add_errback(self._failed)

    def _acked(self, ended: float, _metadata: object = None) -> None:
        self._failures_in_row = 0
        self.metrics.events_published.inc()
        self.metrics.publish_lag.observe(max(time.monotonic() - ended, 0.0))

    def _failed(self, exc: BaseException) -> None:
        self._failures_in_row += 1
        self.drop("publish_failed")
        now = time.monotonic()
        if now - self._last_warning > WARN_EVERY_S:  # one line per outage, not one per event
            self._last_warning = now
            log.warning("tap_publish_failed", error=type(exc).__name__, topic=self.settings.kafka_topic)

    def _connected(self) -> Producer | None:
        delay = 0.5
        while self._producer is None:
            try:
                self._producer = self._factory(self.settings)
                self._created_at = time.monotonic()
                self._failures_in_row = 0
                self.metrics.broker_up.set(1)
                log.info("tap_kafka_connected", topic=self.settings.kafka_topic)
            except (KafkaError, OSError) as exc:
                self.metrics.broker_up.set(0)
                log.warning("tap_kafka_unreachable_retrying", error=type(exc).__name__, retry_in_s=round(delay, 1))
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, BACKOFF_MAX_S)
        return self._producer

    def _recycle_if_stuck(self) -> None:
        if (self._producer is None or self._failures_in_row < RECYCLE_AFTER_FAILURES
                or time.monotonic() - self._created_at < RECYCLE_MIN_S):
            return
        log.warning("tap_producer_recycled", failures_in_row=self._failures_in_row)
        producer, self._producer = self._producer, None
        self.metrics.broker_up.set(0)
        with contextlib.suppress(Exception):  # its pending records fail through their errbacks: counted
            producer.close(timeout=0)

    def _refresh_broker_gauge(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):  # a gauge is not worth a crash
                self.metrics.broker_up.set(1 if self._producer.bootstrap_connected() else 0)
