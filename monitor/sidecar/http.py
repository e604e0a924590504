"""The sidecar's HTTP surface (FastAPI): metrics, probes and the status API.

``/metrics`` negotiates the format: OpenMetrics (with exemplars) when the scraper asks for
``application/openmetrics-text``, the classic Prometheus text format otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import exposition
from prometheus_client.openmetrics import exposition as openmetrics

from monitor import __version__
from monitor.sidecar.consumer import ConsumerState
from monitor.sidecar.metrics import Metrics
from monitor.sidecar.windows import SlidingCounts, status

LIVENESS_TIMEOUT_S = 120.0


def create_app(metrics: Metrics, state: ConsumerState, windows: SlidingCounts,
               clusters: Callable[[], list[str]]) -> FastAPI:
    app = FastAPI(title="Framewatch", version=__version__,
                  description="Trigger-framing monitor for LLM traffic: metrics, probes and status.")

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
        ok = state.ready and state.broker_ok
        return JSONResponse({"status": "ready" if ok else "not_ready", "broker_reachable": state.broker_ok,
                             "last_error": None if ok else state.last_error},
                            status_code=200 if ok else 503)

    @app.get("/v1/status", summary="Failure rates by cluster and framing over sliding windows (this replica)")
    def v1_status() -> dict[str, object]:
        return {"windows": status(windows, clusters()), "replica_local": True}

    return app
