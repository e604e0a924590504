"""The tap's ASGI app: forward every request to the upstream, stream the answer back, capture completions.

A plain ASGI callable rather than a framework router, because every path must reach the upstream untouched
and each microsecond here is added to every inference request. Status, headers and body bytes go back as
the upstream sent them (hop-by-hop headers excepted, RFC 9110 7.6.1), chunk by chunk as they arrive: the
body is copied for capture (up to ``tap_max_body_bytes``) but never held back. Building and publishing
the event happens after the last byte, in the publisher thread.

The tap's own ``/metrics``, ``/healthz`` and ``/readyz`` answer only on the metrics port, so no upstream
path is shadowed. Headers, including ``Authorization``, are forwarded and never logged or captured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import exposition

from monitor import __version__
from monitor.logs import get_logger
from monitor.settings import Settings
from monitor.tap.exchange import CAPTURED_PATHS, Exchange, trace_id_from_traceparent
from monitor.tap.metrics import TapMetrics, status_class
from monitor.tap.publisher import EventPublisher
from monitor.tap.upstream import UpstreamError, UpstreamPool, UpstreamResponse, UpstreamTimeout

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = get_logger("framewatch.tap")

#: Connection-scoped headers that a proxy must not forward (RFC 9110 7.6.1), plus Host (set for the upstream).
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                        b"trailer", b"transfer-encoding", b"upgrade", b"proxy-connection"})
REQUEST_DROP = HOP_BY_HOP | {b"host"}


def _forwardable(headers: list[tuple[bytes, bytes]], drop: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    named: set[bytes] = set()
    for key, value in headers:
        if key.lower() == b"connection":
            named |= {v.strip().lower() for v in value.split(b",")}
    return [(k, v) for k, v in headers if k.lower() not in drop and k.lower() not in named]


class _Capture:
    """A copy of a body up to ``limit`` bytes; beyond it capture stops (the body still flows)."""

    __slots__ = ("chunks", "size", "limit", "overflow")

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.overflow = False

    def add(self, chunk: bytes) -> None:
        if self.overflow:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self.overflow = True
            self.chunks = []
        else:
            self.chunks.append(chunk)

    def value(self) -> bytes:
        return b"".join(self.chunks)


class TapApp:
    def __init__(self, settings: Settings, metrics: TapMetrics, publisher: EventPublisher) -> None:
        self.settings = settings
        self.metrics = metrics
        self.publisher = publisher
        self.upstream = settings.tap_upstream.rstrip("/")
        self.metrics_port = settings.tap_metrics_port
        self.pool: UpstreamPool | None = None
        self.ready = False

    # -- ASGI entry ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            server = scope.get("server")
            if server and server[1] == self.metrics_port:
                await self._own_endpoint(scope, send)
            else:
                await self._proxy(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # websockets are not part of the OpenAI HTTP API: the connection is simply refused

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def startup(self) -> None:
        s = self.settings
        self.pool = UpstreamPool(s.tap_upstream, max_idle=s.tap_max_connections,
                                 connect_timeout=s.tap_upstream_connect_timeout_s,
                                 read_timeout=s.tap_upstream_timeout_s)
        self.publisher.start()
        self.ready = True
        log.info("tap_started", upstream=self.upstream, port=s.tap_port, metrics_port=s.tap_metrics_port,
                 topic=s.kafka_topic)

    async def shutdown(self) -> None:
        self.ready = False
        if self.pool is not None:
            await self.pool.aclose()
        await asyncio.to_thread(self.publisher.stop)
        log.info("tap_stopped")

    # -- the metrics port ------------------------------------------------------------------------

    async def _own_endpoint(self, scope: Scope, send: Send) -> None:
        path = scope["path"]
        if path == "/metrics":
            body, ctype, status = exposition.generate_latest(self.metrics.registry), exposition.CONTENT_TYPE_LATEST, 200
        elif path in ("/healthz", "/readyz"):
            # Ready does not depend on the broker: an absent broker must not take inference out of service.
            ok = self.ready or path == "/healthz"
            body = json.dumps({"status": "ok" if ok else "starting", "version": __version__}).encode()
            ctype, status = "application/json", 200 if ok else 503
        else:
            body, ctype, status = b'{"detail": "not found"}', "application/json", 404
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    # -- the proxy -------------------------------------------------------------------------------

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.pool is not None, "lifespan startup has not run"
        started, started_wall = time.perf_counter(), time.time()
        path: str = scope["path"]
        route = CAPTURED_PATHS.get(path.rstrip("/")) if scope["method"] == "POST" else None
        label = route or "other"
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        limit = self.settings.tap_max_body_bytes
        request_capture = _Capture(limit) if route else None

        # The request body: read whole when it comes in one message (the usual case), else streamed on.
        message = await receive()
        first: bytes = message.get("body", b"")
        content: bytes | AsyncIterator[bytes]
        if message.get("more_body", False):
            content = self._request_stream(first, receive, request_capture)
        else:
            content = first
            if request_capture is not None:
                request_capture.add(first)

        target: bytes = scope.get("raw_path") or path.encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        try:
            response = await self.pool.request(scope["method"].encode(), target,
                                               _forwardable(raw_headers, REQUEST_DROP), content)
        except UpstreamTimeout:
            self._count(label, "error", started)
            await self._answer_error(send, 504, "upstream timed out before answering")
            log.warning("tap_upstream_timeout", endpoint=path)
            if route:
                self.publisher.drop("incomplete")
            return
        except (UpstreamError, OSError) as exc:
            self._count(label, "error", started)
            await self._answer_error(send, 502, "upstream unreachable")
            log.warning("tap_upstream_unreachable", endpoint=path, error=type(exc).__name__)
            if route:
                self.publisher.drop("incomplete")
            return

        self.metrics.upstream_seconds.labels(label).observe(time.perf_counter() - started)
        self.metrics.requests.labels(label, status_class(response.status)).inc()
        capture = _Capture(limit) if route and 200 <= response.status < 300 else None
        try:
            complete = await self._relay(response, receive, send, capture)
        except _UpstreamBrokeOff:
            self.metrics.exchange_seconds.labels(label).observe(time.perf_counter() - started)
            if capture is not None:
                self.publisher.drop("incomplete")
            raise
        duration = time.perf_counter() - started
        self.metrics.exchange_seconds.labels(label).observe(duration)
        log.debug("tap_exchange", endpoint=path, status=response.status, complete=complete,
                  duration_ms=round(duration * 1000, 1))
        if capture is None or route is None or request_capture is None:
            return  # not a completion, or an upstream error: nothing the model answered
        if not complete:
            self.publisher.drop("incomplete")
            return
        if capture.overflow or request_capture.overflow:
            self.publisher.drop("not_captured")
            return
        headers = {k.lower(): v for k, v in response.headers if k.lower() in (b"content-type", b"content-encoding")}
        traceparent = next((v for k, v in raw_headers if k == b"traceparent"), None)
        self.publisher.offer(Exchange(
            path=path.rstrip("/"), status=response.status, request_body=request_capture.value(),
            response_body=capture.value(), response_content_type=headers.get(b"content-type", b"").decode("latin-1"),
            response_content_encoding=headers.get(b"content-encoding", b"").decode("latin-1"),
            trace_id=trace_id_from_traceparent(traceparent.decode("latin-1") if traceparent else None),
            started_at=started_wall, duration_s=duration, ended_at=time.monotonic()))

    async def _request_stream(self, first: bytes, receive: Receive,
                              capture: _Capture | None) -> AsyncIterator[bytes]:
        if capture is not None:
            capture.add(first)
        yield first
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionAbortedError("client went away while sending its request")
            chunk = message.get("body", b"")
            if capture is not None:
                capture.add(chunk)
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    async def _relay(self, response: UpstreamResponse, receive: Receive, send: Send,
                     capture: _Capture | None) -> bool:
        """Send the upstream's answer on as it arrives; True if every byte reached the client.

        A client that goes away cancels the copy at once and closes the upstream connection, so the
        inference server stops generating for nobody. An upstream that breaks off mid-body makes the tap
        break off too (the client sees the same truncated response, not a clean end).
        """
        headers = _forwardable(response.headers, HOP_BY_HOP)
        pump = asyncio.ensure_future(self._pump(response, send, capture, headers))
        watch = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            watch.cancel()
            await response.aclose()
        if pump.cancelled():
            log.info("tap_client_disconnected", status=response.status)
            return False
        exc = pump.exception()
        if exc is not None:
            log.warning("tap_upstream_broke_off", error=type(exc).__name__, status=response.status)
            raise _UpstreamBrokeOff from exc
        return bool(pump.result())

    async def _pump(self, response: UpstreamResponse, send: Send, capture: _Capture | None,
                    headers: list[tuple[bytes, bytes]]) -> bool:
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        async for chunk in response.iter_body():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if capture is not None:
                capture.add(chunk)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

    async def _answer_error(self, send: Send, status: int, message: str) -> None:
        body = json.dumps({"error": {"message": message, "type": "framewatch_tap_error", "code": status}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _count(self, label: str, code: str, started: float) -> None:
        self.metrics.requests.labels(label, code).inc()
        self.metrics.exchange_seconds.labels(label).observe(time.perf_counter() - started)


class _UpstreamBrokeOff(Exception):
    """Raised to the ASGI server after the response started: it then aborts the client connection, which is
    how a proxy passes on an upstream that stopped mid-body."""


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
