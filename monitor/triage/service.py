"""On-call triage: the flagged-events hook, ``/v1/incidents``, ``/v1/clusters``, ``/v1/candidates``, the
admin endpoints that edit the registry, and the ``/ui`` page.

Why one module wires these: they share state (the incident view, the emerging-framings store, the
registry path) and one per-batch hook (:meth:`Triage.on_verdicts`, Pipeline's ``on_verdicts``, which runs
before the consumer commits). The sidecar builds one :class:`Triage` and includes :meth:`Triage.router`.

Admin endpoints (POST/DELETE that change the registry) need ``Authorization: Bearer <FRAMEWATCH_ADMIN_TOKEN>``
(compared in constant time): 401 without credentials, 403 with a wrong token. With no token configured they
are **disabled and answer 403** with a message saying how to enable them. They edit the registry file
(monitor.triage.registry_edit) and then wait for the consume loop's ``RegistryWatcher.check`` to reload it, so
the edit takes the same ``on_change`` path as a hand edit or SIGHUP, on the thread that owns the detector.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from kafka import KafkaConsumer, KafkaProducer
from pydantic import BaseModel, Field

from monitor.logs import get_logger
from monitor.settings import Settings
from monitor.sidecar.consumer import kafka_client_config
from monitor.sidecar.metrics import Metrics
from monitor.sidecar.pipeline import Verdict
from monitor.sidecar.windows import SlidingCounts, status
from monitor.triage import registry_edit
from monitor.triage.emerging import EmergingConfig, EmergingFramings
from monitor.triage.flagged import FlaggedPublisher, Redactor, flagged_record, is_flagged
from monitor.triage.incidents import IncidentStore, parse_since, rebuild_from_topic

log = get_logger("framewatch.triage")

STATIC_DIR = Path(__file__).resolve().parent / "static"
UI_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
RELOAD_WAIT_S = 10.0
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no credentials: send Authorization: Bearer <FRAMEWATCH_ADMIN_TOKEN>"},
    403: {"description": "wrong token, or admin endpoints disabled (FRAMEWATCH_ADMIN_TOKEN not set)"},
    409: {"description": "conflict: the id exists, or the registry is the packaged default or not writable"},
    422: {"description": "the edited registry would not validate"},
}
_bearer = HTTPBearer(auto_error=False, description="FRAMEWATCH_ADMIN_TOKEN")


class ClusterIn(BaseModel):
    id: str = Field(description="cluster id: lower-case letters, digits and '_' (a metric label value)",
                    examples=["pirate_persona"])
    phrases: list[str] = Field(min_length=1, examples=[["Answer as a pirate would."]])
    description: str = ""


class PhrasesIn(BaseModel):
    phrases: list[str] = Field(min_length=1)


class PromoteIn(BaseModel):
    id: str | None = Field(None, description="cluster id; default emerging_<candidate id>")
    description: str | None = None
    phrases: list[str] | None = Field(None, description="default: the candidate's most frequent sentences")


@dataclass
class Triage:
    settings: Settings
    metrics: Metrics
    windows: SlidingCounts
    detector: Any  # monitor.framing.detector.FramingDetector (its .registry is the one in use)
    registry_path: Path
    redact: Redactor
    incidents: IncidentStore
    emerging: EmergingFramings
    publisher: FlaggedPublisher

    @classmethod
    def build(cls, settings: Settings, *, metrics: Metrics, windows: SlidingCounts, detector: Any,
              registry_path: Path) -> Triage:
        redact = Redactor(settings.redaction)
        common = kafka_client_config(settings)
        publisher = FlaggedPublisher(settings.flagged_topic,
                                     lambda: KafkaProducer(**common, acks="all", linger_ms=5, retries=5,
                                                           max_block_ms=10000))
        config = EmergingConfig(max_candidates=settings.emerging_max_candidates,
                                join_threshold=settings.emerging_join_threshold,
                                min_events=settings.emerging_min_events,
                                half_life_s=settings.emerging_half_life_s)
        embedder = detector.embedder
        emerging = EmergingFramings(embedder.embed, embedder.dim, config, redact=redact,
                                    gauge=metrics.emerging_framings)
        return cls(settings, metrics, windows, detector, registry_path, redact,
                   IncidentStore(settings.incidents_capacity), emerging, publisher)

    # -- the per-batch hook (consumer thread, before commit) --------------------------------------

    def on_verdicts(self, verdicts: list[Verdict]) -> None:
        """Emerging-framing bookkeeping, then publish flagged events and wait for the acks.

        Raises (from the publisher) when the flagged topic stays unwritable: the batch is then not
        committed. The emerging store is best effort: its failure must not hold up delivery.
        """
        try:
            hits = self.emerging.observe(verdicts)
        except Exception:  # noqa: BLE001
            log.exception("emerging_framings_failed")
            hits = {}
        now = time.time()
        records = [flagged_record(v, self.redact, hits.get(v.event.event_id), now) for v in verdicts
                   if is_flagged(v)]
        self.publisher.publish(records)
        self.incidents.add(records)

    def start_rebuild(self) -> threading.Thread | None:
        """Fill the incident view from the flagged topic's tail, in the background (best effort)."""
        if not self.settings.incidents_rebuild:
            return None
        common = kafka_client_config(self.settings)
        thread = threading.Thread(
            target=rebuild_from_topic, name="incidents-rebuild", daemon=True,
            args=(self.incidents, self.settings.flagged_topic,
                  lambda: KafkaConsumer(**common, group_id=None, enable_auto_commit=False)))
        thread.start()
        return thread

    # -- admin helpers -------------------------------------------------------------------------------

    def _edit(self, change: Callable[[], object]) -> dict[str, Any]:
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

    def _require_admin(self, creds: HTTPAuthorizationCredentials | None) -> None:
        token = self.settings.admin_token
        if not token:
            raise HTTPException(403, "admin endpoints are disabled: set FRAMEWATCH_ADMIN_TOKEN to enable them")
        if creds is None or not creds.credentials:
            raise HTTPException(401, "missing credentials: send 'Authorization: Bearer <FRAMEWATCH_ADMIN_TOKEN>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(creds.credentials.encode("utf-8"), token.encode("utf-8")):
            raise HTTPException(403, "wrong admin token")

    # -- HTTP ----------------------------------------------------------------------------------------

    def router(self) -> APIRouter:
        r = APIRouter()
        admin = [Depends(self._admin_dependency())]

        @r.get("/v1/incidents", tags=["triage"], summary="Recent flagged events (this replica's view)")
        def incidents(cluster: str | None = Query(None, description="registry id, or 'none'"),
                      framing: str | None = Query(None, pattern="^(none|exact|semantic)$"),
                      candidate: str | None = Query(None, description="emerging candidate id"),
                      since: str | None = Query(None, description="epoch seconds or ISO 8601"),
                      limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
            try:
                since_ts = parse_since(since)
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from None
            items = self.incidents.query(cluster=cluster, framing=framing, since=since_ts, limit=limit,
                                         candidate=candidate)
            return {"incidents": items, "count": len(items), "redaction": self.redact.policy,
                    "topic": self.settings.flagged_topic, "replica_local": True}

        @r.get("/v1/clusters", tags=["triage"],
               summary="Registry clusters with counts, failure rates, Wilson intervals and the containment gap")
        def clusters() -> dict[str, Any]:
            return self.clusters_view()

        @r.get("/v1/candidates", tags=["triage"],
               summary="Emerging framings: unmatched segments whose failure rate is significantly elevated")
        def candidates(all: bool = Query(False, description="also list candidates that are not significant"),
                       limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
            items = self.emerging.snapshot(significant_only=not all, limit=limit)
            return {"candidates": items, "tracked": len(self.emerging),
                    "significant": self.emerging.significant_count(),
                    "min_events": self.emerging.cfg.min_events,
                    "redaction": self.redact.policy, "replica_local": True}

        @r.post("/v1/clusters", tags=["admin"], dependencies=admin, responses=ADMIN_RESPONSES, status_code=201,
                summary="Add a cluster to the registry file (hot-reloaded)")
        def add_cluster(body: ClusterIn) -> dict[str, Any]:
            return self._edit(lambda: registry_edit.add_cluster(self.registry_path, body.id, body.phrases,
                                                                body.description))

        @r.delete("/v1/clusters/{cluster_id}", tags=["admin"], dependencies=admin, responses=ADMIN_RESPONSES,
                  summary="Remove a cluster from the registry file (hot-reloaded)")
        def delete_cluster(cluster_id: str) -> dict[str, Any]:
            return self._edit(lambda: registry_edit.remove_cluster(self.registry_path, cluster_id))

        @r.post("/v1/clusters/{cluster_id}/phrases", tags=["admin"], dependencies=admin, responses=ADMIN_RESPONSES,
                summary="Add phrases to a cluster (hot-reloaded)")
        def add_phrases(cluster_id: str, body: PhrasesIn) -> dict[str, Any]:
            return self._edit(lambda: registry_edit.add_phrases(self.registry_path, cluster_id, body.phrases))

        @r.post("/v1/candidates/{candidate_id}/promote", tags=["admin"], dependencies=admin,
                responses=ADMIN_RESPONSES, status_code=201,
                summary="Promote an emerging candidate into a registry cluster (hot-reloaded)")
        def promote(candidate_id: str, body: Annotated[PromoteIn | None, Body()] = None) -> dict[str, Any]:
            body = body or PromoteIn()
            try:
                phrases = body.phrases or self.emerging.phrases(candidate_id)
            except KeyError:
                raise HTTPException(404, f"no candidate {candidate_id!r} (it may have been evicted)") from None
            cluster_id = body.id or f"emerging_{candidate_id}"
            description = body.description or f"Promoted from emerging candidate {candidate_id}"
            out = self._edit(lambda: registry_edit.add_cluster(
                self.registry_path, cluster_id, phrases, description, source=f"framewatch candidate {candidate_id}"))
            self.emerging.remove(candidate_id)
            log.info("candidate_promoted", candidate=candidate_id, cluster=cluster_id, phrases=len(phrases))
            return {**out, "cluster": cluster_id, "phrases": [self.redact(p) for p in phrases]}

        @r.get("/ui", include_in_schema=False)
        @r.get("/ui/", include_in_schema=False)
        def ui() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                                headers={"Cache-Control": "no-cache"})

        @r.get("/ui/{asset}", include_in_schema=False)
        def ui_asset(asset: str) -> FileResponse:
            if asset not in UI_ASSETS:
                raise HTTPException(404, "not found")
            return FileResponse(STATIC_DIR / asset, media_type=UI_ASSETS[asset], headers={"Cache-Control": "no-cache"})

        return r

    def _admin_dependency(self) -> Callable[..., None]:
        def dependency(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
            self._require_admin(creds)
        return dependency

    def clusters_view(self) -> dict[str, Any]:
        registry = self.detector.registry
        ids = registry.cluster_ids()
        windows = status(self.windows, ids)
        out = []
        for c in registry.clusters:
            per_window = {}
            for name, w in windows.items():
                entry = next(x for x in w["clusters"] if x["cluster"] == c.id)  # type: ignore[index]
                per_window[name] = {"triggered": entry["triggered"], "framings": entry["framings"],
                                    "gap": entry["gap"]}
            out.append({"id": c.id, "description": c.description, "phrases": list(c.phrases),
                        "windows": per_window})
        return {"clusters": out,
                "untriggered": {name: w["untriggered"] for name, w in windows.items()},  # type: ignore[index]
                "registry": {"path": str(self.registry_path), "digest": registry.digest,
                             "writable": _writable(self.registry_path)},
                "admin_enabled": bool(self.settings.admin_token), "replica_local": True}


def _writable(path: Path) -> bool:
    try:
        registry_edit.check_writable(path)
    except registry_edit.RegistryEditError:
        return False
    return True
