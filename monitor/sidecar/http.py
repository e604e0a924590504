"""The sidecar's HTTP surface (FastAPI): metrics, probes and the status API, behind a bounded-input guard.

``/metrics`` negotiates the format: OpenMetrics (with exemplars) when the scraper asks for
``application/openmetrics-text``, the classic Prometheus text format otherwise.

:class:`BoundedInput` is plain ASGI on purpose: it runs before FastAPI (or any route dependency) reads a body.
FastAPI parses a JSON body before the token dependency of an admin route runs, so without this guard one
unauthenticated POST of any size was read into memory before its 401. The guard

* answers admin requests (non-GET methods under ``/v1/clusters`` and ``/v1/candidates``) that lack the right
  bearer token without reading a byte of their body: 401 for missing or wrong credentials (RFC 6750's
  ``invalid_token`` is a 401 too), 403 only while admin endpoints are disabled (no token configured); same codes
  and messages as the routes' own check in :mod:`monitor.triage.routes`, which still runs behind it;
* refuses any body over ``http_max_body_bytes`` with 413: at once from ``Content-Length``, and by counting the
  bytes of a chunked or streamed body as the application reads them;
* adds browser security headers (CSP, nosniff, frame-ancestors, referrer policy) to ``/ui`` and its files.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import exposition
from prometheus_client.openmetrics import exposition as openmetrics

from monitor import __version__
from monitor.logs import get_logger
from monitor.sidecar.consumer import ConsumerState
from monitor.sidecar.metrics import Metrics
from monitor.sidecar.windows import SlidingCounts, status

log = get_logger("framewatch.http")

LIVENESS_TIMEOUT_S = 120.0
DEFAULT_MAX_BODY_BYTES = 1_048_576
ADMIN_PREFIXES = ("/v1/clusters", "/v1/candidates")
UI_SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                 b"img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _BodyTooLarge(Exception):
    """Raised into the application when a streamed body passes the limit."""


def is_admin_request(method: str, path: str) -> bool:
    return method not in {"GET", "HEAD", "OPTIONS"} and any(
        path == p or path.startswith(p + "/") for p in ADMIN_PREFIXES)


def admin_refusal(token: str | None, authorization: str | None) -> tuple[int, str] | None:
    """(status, message) if this Authorization header does not grant admin access, else None."""
    if not token:
        return 403, "admin endpoints are disabled: set FRAMEWATCH_ADMIN_TOKEN to enable them"
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return 401, "missing credentials: send 'Authorization: Bearer <FRAMEWATCH_ADMIN_TOKEN>'"
    if not hmac.compare_digest(credentials.encode("utf-8", "replace"), token.encode("utf-8")):
        return 401, "wrong admin token"
    return None


class BoundedInput:
    """ASGI middleware: authentication before the body, a body-size limit everywhere, UI security headers."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 admin_token: str | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.admin_token = admin_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "GET")
        headers = {k.lower(): v for k, v in scope.get("headers", ())}
        if is_admin_request(method, path):
            refusal = admin_refusal(self.admin_token, headers.get(b"authorization", b"").decode("latin-1"))
            if refusal is not None:
                extra = [(b"www-authenticate", b"Bearer")] if refusal[0] == 401 else []
                await _respond(send, refusal[0], refusal[1], extra)
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _respond(send, 400, "invalid Content-Length")
                return
            if declared > self.max_body_bytes:
                await self._too_large(send, path, declared)
                return
        if path == "/ui" or path.startswith("/ui/"):
            send = _with_headers(send, UI_SECURITY_HEADERS)

        received = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    over = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                return  # whatever the application makes of the interrupted read, the answer is 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._too_large(send, path, received)

    async def _too_large(self, send: Send, path: str, size: int) -> None:
        log.warning("http_body_too_large", path=path[:200], bytes_seen=size, limit=self.max_body_bytes)
        await _respond(send, 413, f"request body over the {self.max_body_bytes}-byte limit (http_max_body_bytes)")


async def _respond(send: Send, status_code: int, detail: str,
                   extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(extra_headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)
    return wrapped


def create_app(metrics: Metrics, state: ConsumerState, windows: SlidingCounts,
               clusters: Callable[[], list[str]], *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               admin_token: str | None = None, shared_status: bool = False) -> FastAPI:
    """``shared_status``: ``windows`` are the shared triage view's counts (every replica's events, merged from
    the evidence topic, monitor.triage.view), so ``/v1/status`` answers alike on every pod."""
    app = FastAPI(title="Framewatch", version=__version__,
                  description="Trigger-framing monitor for LLM traffic: metrics, probes and status.")
    app.add_middleware(BoundedInput, max_body_bytes=max_body_bytes, admin_token=admin_token)

    @app.get("/metrics", include_in_schema=False)
    def metrics_endpoint(request: Request) -> Response:
        accept = request.headers.get("accept", "")
        if "application/openmetrics-text" in accept:
            return Response(openmetrics.generate_latest(metrics.registry),
                            media_type=openmetrics.CONTENT_TYPE_LATEST)
        return Response(exposition.generate_latest(metrics.registry), media_type=exposition.CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Liveness: 200 while the consume loop is alive")
    def healthz() -> JSONResponse:
        age = time.monotonic() - state.heartbeat
        alive = not state.stopped and age < LIVENESS_TIMEOUT_S
        return JSONResponse({"status": "ok" if alive else "stalled", "loop_heartbeat_age_s": round(age, 1)},
                            status_code=200 if alive else 503)

    @app.get("/readyz", summary="Readiness: 200 only while consuming (assigned partitions, broker reachable)")
    def readyz() -> JSONResponse:
        reachable = state.broker_ok and state.broker_probe_ok
        ok = state.ready and reachable
        return JSONResponse({"status": "ready" if ok else "not_ready", "broker_reachable": reachable,
                             "last_error": None if ok else state.last_error},
                            status_code=200 if ok else 503)

    @app.get("/v1/status", summary="Failure rates by cluster and framing over sliding windows (every replica's "
                                   "events with the shared triage view, else this replica's)")
    def v1_status() -> dict[str, object]:
        return {"windows": status(windows, clusters()), "replica_local": not shared_status}

    return app
