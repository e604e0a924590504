"""Wiring: settings -> models -> pipeline -> consumer + HTTP server. Used by ``run``, ``demo`` and tests."""

from __future__ import annotations

import signal
import threading
import time
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
#: How often the signal watcher looks for a noted signal (a SIGTERM is acted on within this).
SIGNAL_POLL_S = 0.1


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
        """SIGTERM/SIGINT: finish the batch, commit, leave the group. SIGHUP: re-read the registry now.

        The handlers only note the signal; a watcher thread acts on it. A Python signal handler runs in the main
        thread between two bytecodes, possibly while that thread holds a lock the handler would need: the log
        writer's (structlog's ``PrintLogger`` guards the stream with a plain, non-reentrant ``Lock``) or an
        Event's. Logging from the handler deadlocked the process when SIGTERM landed mid-write: it never exited
        and was killed at the end of the grace period, its batch uncommitted.
        """
        pending: list[int] = []  # list.append/pop are atomic under the GIL: no lock in the handler

        def note(signum: int, _frame: object) -> None:
            pending.append(signum)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, note)

        def act() -> None:
            while not self.consumer.state.stopped:
                time.sleep(SIGNAL_POLL_S)
                while pending:
                    signum = pending.pop(0)
                    if signum == signal.SIGHUP:
                        # Only a flag: the reload itself runs in the consume loop between batches (see build()).
                        log.info("signal_received_reloading_registry")
                        self.reload_requested.set()
                    else:
                        log.info("signal_received_stopping", signal=signal.Signals(signum).name)
                        self.consumer.stop()

        threading.Thread(target=act, name="signals", daemon=True).start()

    def run(self) -> int:
        """Serve HTTP in a thread, consume in this one; returns the exit code."""
        http = self.serve_http()
        try:
            self.consumer.run()
        finally:
            self.server.should_exit = True
            self.close_triage()
            http.join(timeout=5)
        return 0

    def close_triage(self) -> None:
        """Close the triage producers and followers: every one shares the stop, so together they take seconds."""
        if self.triage is not None:
            self.triage.publisher.close()
            self.triage.close()


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
    # The flagged (and evidence) publisher waits inside the consume loop: after a SIGTERM it may finish the batch
    # while the broker answers, and gives up as soon as the consumer abandons waiting (monitor.sidecar.consumer).
    triage.publisher.stop = consumer.abandon_event
    # /v1/status: with the shared triage view, every replica's counts (the same on every pod; docs/triage.md)
    app = create_app(metrics, consumer.state, triage.view.counts if triage.shared else windows,
                     clusters=lambda: list(metrics.clusters), max_body_bytes=settings.http_max_body_bytes,
                     admin_token=settings.admin_token, shared_status=triage.shared)
    app.include_router(triage.router())
    triage.start_rebuild()
    server = uvicorn.Server(uvicorn.Config(app, host=settings.http_host, port=settings.http_port,
                                           log_level="warning", access_log=False))
    log.info("sidecar_built", registry=str(registry_path), clusters=registry.cluster_ids(),
             settings=settings.redacted())
    return Sidecar(settings, metrics, pipeline, consumer, watcher, server, reload_requested, triage)
