"""Wiring: settings -> models -> pipeline -> consumer + HTTP server. Used by ``run``, ``demo`` and tests."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from prometheus_client import disable_created_metrics

from monitor.embedding import configured_embedder
from monitor.framing import registry as registry_mod
from monitor.framing.detector import FramingDetector, detector_options
from monitor.logs import get_logger
from monitor.scoring.scorer import ResponseScorer
from monitor.settings import Settings
from monitor.sidecar.consumer import SidecarConsumer
from monitor.sidecar.events import Limits
from monitor.sidecar.http import create_app
from monitor.sidecar.metrics import Metrics
from monitor.sidecar.pipeline import Pipeline
from monitor.sidecar.windows import SlidingCounts
from monitor.triage.service import Triage

log = get_logger("framewatch.sidecar")
DEFAULT_REGISTRY = registry_mod.DEFAULT_REGISTRY


@dataclass
class Sidecar:
    settings: Settings
    metrics: Metrics
    pipeline: Pipeline
    consumer: SidecarConsumer
    watcher: registry_mod.RegistryWatcher
    server: uvicorn.Server
    reload_requested: threading.Event
    triage: Triage | None = None

    def serve_http(self) -> threading.Thread:
        thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        thread.start()
        return thread

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: finish the batch, commit, leave the group. SIGHUP: re-read the registry now."""
        def _stop(signum: int, _frame: object) -> None:
            log.info("signal_received_stopping", signal=signal.Signals(signum).name)
            self.consumer.stop()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        # Only a flag here: the reload itself runs in the consume loop between batches (see build()).
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def run(self) -> int:
        """Serve HTTP in a thread, consume in this one; returns the exit code."""
        http = self.serve_http()
        try:
            self.consumer.run()
        finally:
            self.server.should_exit = True
            if self.triage is not None:
                self.triage.publisher.close()
            http.join(timeout=5)
        return 0


def build(settings: Settings) -> Sidecar:
    disable_created_metrics()
    metrics = Metrics(model_allowlist=settings.model_allowlist)
    embedder = configured_embedder(settings=settings)
    registry_path = Path(settings.registry_path) if settings.registry_path else DEFAULT_REGISTRY
    registry = registry_mod.load_registry(registry_path)
    detector = FramingDetector(registry, embedder, **detector_options(settings))
    scorer = ResponseScorer.load(settings.classifier_dir, prefix_chars=settings.response_prefix_chars)
    metrics.set_clusters(registry.cluster_ids())
    windows = SlidingCounts()
    limits = Limits(settings.max_event_bytes, settings.max_prompt_chars, settings.max_response_chars,
                    settings.max_messages)
    triage = Triage.build(settings, metrics=metrics, windows=windows, detector=detector, registry_path=registry_path)
    pipeline = Pipeline(detector=detector, scorer=scorer, metrics=metrics, windows=windows, limits=limits,
                        on_verdicts=triage.on_verdicts,  # flagged topic + emerging framings, before commit
                        input_format=settings.input_format)

    def on_change(new: registry_mod.Registry) -> None:
        detector.replace_registry(new)
        metrics.set_clusters(new.cluster_ids())
        windows.forget(set(new.cluster_ids()) | {"none"})
        metrics.registry_reloads.labels("success").inc()
        log.info("registry_reloaded", path=str(registry_path), clusters=new.cluster_ids())

    def on_error(exc: Exception) -> None:
        metrics.registry_reloads.labels("error").inc()
        log.error("registry_reload_failed_keeping_previous", path=str(registry_path), error=str(exc))

    watcher = triage.registry_watcher(on_change, on_error)  # the file, plus the registry topic's edits
    reload_requested = threading.Event()

    def between_batches() -> None:
        force = reload_requested.is_set()
        reload_requested.clear()
        watcher.check(force=force)

    consumer = SidecarConsumer(settings, pipeline, metrics, on_batch=between_batches)
    # The flagged publisher waits inside the consume loop: it must see SIGTERM as soon as the loop does.
    triage.publisher.stop = consumer.stop_event
    app = create_app(metrics, consumer.state, windows, clusters=lambda: list(metrics.clusters),
                     max_body_bytes=settings.http_max_body_bytes, admin_token=settings.admin_token)
    app.include_router(triage.router())
    triage.start_rebuild()
    server = uvicorn.Server(uvicorn.Config(app, host=settings.http_host, port=settings.http_port,
                                           log_level="warning", access_log=False))
    log.info("sidecar_built", registry=str(registry_path), clusters=registry.cluster_ids(),
             settings=settings.redacted())
    return Sidecar(settings, metrics, pipeline, consumer, watcher, server, reload_requested, triage)
