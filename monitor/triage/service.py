"""On-call triage: the per-batch hook, the followers of the shared topics, and the registry edits behind the
``/v1/incidents``, ``/v1/clusters``, ``/v1/candidates`` and admin routes (:mod:`monitor.triage.routes`).

Why one service holds these: they share state (the :class:`~monitor.triage.view.TriageView`, the registry
source) and one per-batch hook (:meth:`Triage.on_verdicts`, Pipeline's ``on_verdicts``, which runs before
the consumer commits). The sidecar builds one :class:`Triage` and includes :meth:`Triage.router`; the routes
are a module of their own so the HTTP shapes read apart from the state they show.

Shared view (the default, docs/triage.md): each batch's evidence goes to the evidence topic and its
flagged events to the flagged topic, both acknowledged before the commit; every replica follows both
topics and merges them, so every pod answers alike. With ``FRAMEWATCH_TRIAGE_SHARED=false`` the evidence
is merged in process (one replica's view).

Admin edits (the routes check the token: :mod:`monitor.triage.routes`): an edit is planned against the
effective registry and validated, then published to the registry topic (monitor.triage.registry_topic),
which every replica applies; the call waits for this replica's consume loop to have reloaded it. Without a
registry topic the registry file is edited instead (monitor.triage.registry_edit).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import Gauge

from monitor.framing.registry import Registry, RegistryWatcher
from monitor.logs import get_logger
from monitor.settings import Settings
from monitor.sidecar.kafka_client import kafka_client_config
from monitor.sidecar.metrics import Metrics
from monitor.sidecar.pipeline import Verdict
from monitor.sidecar.windows import SlidingCounts, status
from monitor.triage import evidence as ev
from monitor.triage import registry_edit
from monitor.triage import registry_topic as rt
from monitor.triage.emerging import EmergingConfig, EmergingFramings
from monitor.triage.flagged import FlaggedPublisher, Redactor, flagged_record, is_flagged
from monitor.triage.follow import TopicFollower, from_beginning, since, tail
from monitor.triage.incidents import IncidentStore
from monitor.triage.routes import build_router
from monitor.triage.topics import ensure_topics, wanted
from monitor.triage.view import EvidenceCounts, TriageView

log = get_logger("framewatch.triage")

RELOAD_WAIT_S = 10.0
REGISTRY_CATCH_UP_S = 10.0


def replica_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Triage:
    settings: Settings
    metrics: Metrics
    detector: Any  # monitor.framing.detector.FramingDetector (its .registry is the one in use)
    registry_path: Path
    redact: Redactor
    view: TriageView
    publisher: FlaggedPublisher  # the flagged topic's (the sidecar wires its stop event to the consume loop's)
    evidence: ev.EvidencePublisher | None  # None: evidence merged in process (one replica's view)
    overlay: rt.RegistryOverlay | None  # None: admin edits write the registry file
    version_info: Gauge
    replica: str = field(default_factory=replica_name)
    stop: threading.Event = field(default_factory=threading.Event)
    followers: list[TopicFollower] = field(default_factory=list)
    registry_source: rt.RegistrySource | None = None
    _registry_producer: Any = None
    _edit_lock: threading.Lock = field(default_factory=threading.Lock)
    _ensured_at: float = 0.0

    @classmethod
    def build(cls, settings: Settings, *, metrics: Metrics, detector: Any, registry_path: Path,
              windows: SlidingCounts | None = None, flagged: FlaggedPublisher | None = None) -> Triage:
        """``windows`` (the sidecar's own counts) is accepted for the wiring's sake; the view keeps its own."""
        redact = Redactor(settings.redaction)
        common = kafka_client_config(settings)
        stop = threading.Event()
        flagged = flagged or FlaggedPublisher(
            settings.flagged_topic,
            lambda: KafkaProducer(**common, acks="all", linger_ms=5, retries=5, max_block_ms=5000,
                                  max_request_size=settings.kafka_max_request_size))
        embedder = detector.embedder
        emerging = EmergingFramings(embedder.embed, embedder.dim, EmergingConfig.from_settings(settings), redact=redact,
                                    gauge=metrics.emerging_framings)
        view = TriageView(IncidentStore(settings.incidents_capacity, settings.incidents_max_bytes), emerging,
                          EvidenceCounts(), settings.evidence_window_s)
        evidence = None
        if settings.triage_shared and settings.evidence_topic:
            request_size = max(settings.evidence_max_record_bytes + 64_000, settings.kafka_max_request_size)
            evidence = ev.EvidencePublisher(
                settings.evidence_topic,
                lambda: KafkaProducer(**common, acks="all", linger_ms=5, retries=5, max_block_ms=2000,
                                      max_request_size=request_size), stop=stop,
                on_retry=lambda: triage.ensure_topics_soon())
        overlay = rt.RegistryOverlay() if settings.registry_topic else None
        version_info = Gauge("framewatch_registry_version_info",
                             "The trigger registry in use: 1 for its digest (file + registry-topic edits)",
                             ["digest"], registry=metrics.registry)
        triage = cls(settings, metrics, detector, registry_path, redact, view, flagged, evidence, overlay,
                     version_info, stop=stop)
        triage._registry_changed(detector.registry)
        return triage

    @property
    def shared(self) -> bool:
        return self.evidence is not None

    @property
    def incidents(self) -> IncidentStore:
        return self.view.incidents

    @property
    def emerging(self) -> EmergingFramings:
        return self.view.emerging

    # -- the per-batch hook (consumer thread, before commit) --------------------------------------

    def on_verdicts(self, verdicts: list[Verdict]) -> None:
        """Evidence, then flagged events, each written and acknowledged (or raising: no commit)."""
        now = time.time()
        try:
            records = ev.build(verdicts, known_clusters=set(self.detector.registry.cluster_ids()),
                               embed=self.detector.embedder.embed, redact=self.redact, replica=self.replica,
                               now=now, max_bytes=self.settings.evidence_max_record_bytes)
        except Exception:  # noqa: BLE001 - evidence is for statistics: it must not hold up delivery
            log.exception("evidence_build_failed")
            records = []
        keys: dict[tuple[int, int], list[str]] = {
            (doc["partition"], e["o"]): e["h"] for _, doc in records for e in doc["events"] if "h" in e}
        if self.evidence is not None:
            self.evidence.stop = self.publisher.stop  # honour SIGTERM as the flagged publisher does
            self.evidence.publish(records)
        else:
            for _, doc in records:
                self.view.apply(ev.Evidence(doc["replica"], doc["ts"], doc["topic"], doc["partition"],
                                            doc["events"]))
        out = []
        for v in verdicts:
            if not is_flagged(v):
                continue
            hit = keys.get((v.record.partition, v.record.offset))
            out.append(flagged_record(v, self.redact, self.emerging.hit(hit) if hit else None, now))
        self.publisher.publish(out)
        if not self.shared:
            self.incidents.add(out)

    # -- followers -----------------------------------------------------------------------------------

    def _consumer(self) -> Any:
        return KafkaConsumer(**kafka_client_config(self.settings), group_id=None, enable_auto_commit=False,
                             check_crcs=self.settings.kafka_check_crcs)

    def _ensure_topics(self, registry: bool) -> None:
        if self.settings.triage_create_topics:
            ensure_topics(self.settings, kafka_client_config(self.settings),
                          wanted(self.settings, self.shared and not registry, registry))

    def ensure_topics_soon(self, every_s: float = 30.0) -> None:
        """Re-create missing triage topics in the background (a broker that lost them, e.g. memory-only); at
        most every ``every_s``: called while the evidence publisher retries, so it never blocks the loop."""
        now = time.monotonic()
        if now - self._ensured_at < every_s:
            return
        self._ensured_at = now
        threading.Thread(target=self._ensure_topics, args=(False,), name="ensure-topics", daemon=True).start()

    def start_rebuild(self) -> threading.Thread | None:
        """Start following the flagged topic (incidents) and, shared, the evidence topic (in the background)."""
        if self.shared:
            self._ensure_topics(registry=False)
            self.followers.append(TopicFollower(
                "evidence", self.settings.evidence_topic, self._consumer, self.view.on_evidence,
                since(self.settings.evidence_window_s), self.stop).start())
        if self.shared or self.settings.incidents_rebuild:
            self.followers.append(TopicFollower(
                "flagged", self.settings.flagged_topic, self._consumer, self.view.on_flagged,
                tail(self.settings.incidents_capacity), self.stop).start())
        return None

    def registry_watcher(self, on_change: Callable[[Registry], None],
                         on_error: Callable[[Exception], None]) -> RegistryWatcher:
        """What the consume loop checks between batches: the registry file, plus the registry topic's edits.

        With a registry topic, follows it and waits (bounded) until caught up, then applies the edits
        before the first batch is consumed, so a restarted replica never classifies with a stale registry.
        """
        def changed(registry: Registry) -> None:
            on_change(registry)
            self._registry_changed(registry)

        if self.overlay is None:
            return RegistryWatcher(self.registry_path, on_change=changed, on_error=on_error)
        self._ensure_topics(registry=True)
        source = rt.RegistrySource(self.registry_path, self.overlay, on_change=changed, on_error=on_error)
        follower = TopicFollower("registry", self.settings.registry_topic, self._consumer, self.overlay.apply,
                                 from_beginning, self.stop).start()
        self.followers.append(follower)
        if not follower.caught_up.wait(REGISTRY_CATCH_UP_S):
            log.warning("registry_topic_not_caught_up_starting_with_file", topic=self.settings.registry_topic)
        source.check()
        self.registry_source = source
        return source

    def _registry_changed(self, registry: Registry) -> None:
        self.version_info.clear()
        self.version_info.labels(registry.digest or "unknown").set(1)
        self.view.set_promoted([c.source for c in registry.clusters])

    def close(self) -> None:
        """Stop the followers and close every client this triage opened (the sidecar calls it on shutdown,
        after the consume loop ended: nothing is left for the garbage collector to close)."""
        self.stop.set()
        for f in self.followers:
            f.close(timeout=2)
        self.publisher.close()
        if self.evidence is not None:
            self.evidence.close()
        if self._registry_producer is not None:
            with contextlib.suppress(Exception):
                self._registry_producer.close(timeout=2)
            self._registry_producer = None

    # -- registry edits (the admin routes) -----------------------------------------------------------

    def edit_file(self, change: Callable[[], object]) -> dict[str, Any]:
        """Apply a registry-file edit, then wait for the consume loop to hot-reload it."""
        try:
            result = change()
        except registry_edit.RegistryEditError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        digest = hashlib.sha256(self.registry_path.read_bytes()).hexdigest()[:16]
        deadline = time.monotonic() + RELOAD_WAIT_S
        while self.detector.registry.digest != digest and time.monotonic() < deadline:
            time.sleep(0.05)
        reloaded = self.detector.registry.digest == digest
        log.info("registry_edited_by_admin", path=str(self.registry_path), reloaded=reloaded)
        return {"reloaded": reloaded, "clusters": self.detector.registry.cluster_ids(),
                **({"result": result} if result is not None else {})}

    def _effective(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any] | None]]:
        """(effective document, base document, overlay entries) as this replica has them now."""
        assert self.overlay is not None
        try:
            base, _ = rt.read_base(self.registry_path)
        except Exception as exc:  # noqa: BLE001
            raise HTTPException(409, f"cannot read the base registry {self.registry_path}: {exc}") from None
        _, entries, _ = self.overlay.snapshot()
        return rt.effective_raw(base, entries), base, entries

    def edit_topic(self, cluster_id: str, plan: Callable[[dict[str, Any]], tuple[str, dict[str, Any] | None]],
                   who: str) -> dict[str, Any]:
        """Plan against the effective registry, validate, publish to the registry topic, wait for the reload."""
        with self._edit_lock:
            raw, base, entries = self._effective()
            try:
                op, cluster = plan(raw)
                proposed = dict(entries)
                if op == "revert":
                    proposed.pop(cluster_id, None)
                else:
                    proposed.pop(cluster_id, None)
                    proposed[cluster_id] = cluster
                registry_edit.validate(rt.effective_raw(base, proposed),
                                       f"{self.registry_path} + registry topic", self.registry_path.parent)
            except registry_edit.RegistryEditError as exc:
                raise HTTPException(exc.status, str(exc)) from None
            value, headers = rt.edit_record(op, cluster, who)
            try:
                if self._registry_producer is None:
                    self._registry_producer = KafkaProducer(**kafka_client_config(self.settings), acks="all",
                                                            retries=3, max_block_ms=10000)
                meta = self._registry_producer.send(self.settings.registry_topic, key=cluster_id.encode(),
                                                    value=value, headers=headers).get(timeout=10)
            except Exception as exc:  # noqa: BLE001
                log.error("registry_edit_publish_failed", cluster=cluster_id, op=op,
                          error=f"{type(exc).__name__}: {exc}")
                raise HTTPException(503, f"the registry topic could not be written: {type(exc).__name__}") from None
        log.info("registry_edit_published", cluster=cluster_id, op=op, by=who, topic=self.settings.registry_topic,
                 partition=meta.partition, offset=meta.offset)
        source = self.registry_source
        deadline = time.monotonic() + RELOAD_WAIT_S
        reloaded = False
        while time.monotonic() < deadline:
            if source is not None and source.applied(meta.partition, meta.offset):
                reloaded = self.detector.registry.digest == source.effective_digest
                break
            time.sleep(0.05)
        return {"reloaded": reloaded, "clusters": self.detector.registry.cluster_ids(),
                "registry": {"digest": self.detector.registry.digest, "topic": self.settings.registry_topic,
                             "offset": meta.offset, "by": who}}

    # -- HTTP ----------------------------------------------------------------------------------------

    def router(self) -> APIRouter:
        """The triage routes (:mod:`monitor.triage.routes`), bound to this service."""
        return build_router(self)

    def clusters_view(self, admin: bool = False) -> dict[str, Any]:
        registry = self.detector.registry
        ids = registry.cluster_ids()
        windows = status(self.view.counts, ids)
        out = []
        for c in registry.clusters:
            per_window = {}
            for name, w in windows.items():
                entry = next(x for x in w["clusters"] if x["cluster"] == c.id)  # type: ignore[index]
                per_window[name] = {"triggered": entry["triggered"], "framings": entry["framings"],
                                    "gap": entry["gap"]}
            out.append({"id": c.id, "description": c.description, "phrases": list(c.phrases),
                        "windows": per_window})
        info: dict[str, Any] = {"digest": registry.digest, "edits": "topic" if self.overlay is not None else "file",
                                "writable": self.overlay is not None or _writable(self.registry_path)}
        if admin:  # the file path tells an outsider about the deployment: only for admins
            info["path"] = str(self.registry_path)
        return {"clusters": out,
                "untriggered": {name: w["untriggered"] for name, w in windows.items()},  # type: ignore[index]
                "registry": info, "admin_enabled": bool(self.settings.admin_token), "shared": self.shared}


def _writable(path: Path) -> bool:
    try:
        registry_edit.check_writable(path)
    except registry_edit.RegistryEditError:
        return False
    return True
