"""The triage HTTP routes: ``/v1/incidents``, ``/v1/clusters``, ``/v1/candidates``, the admin endpoints that edit
the registry, and the ``/ui`` page.

Only the HTTP side -- request models, validation of ids, the admin token check, response shapes -- so the service
(:class:`monitor.triage.service.Triage`) holds state and behaviour and this module says what each URL does with
it. Admin endpoints (POST/DELETE that change the registry, and ``GET /v1/registry``) need
``Authorization: Bearer <FRAMEWATCH_ADMIN_TOKEN>``, compared in constant time: 401 without credentials or with a
wrong token; with no token configured they are disabled and answer 403 with a message saying how to enable them
(the sidecar's :class:`~monitor.sidecar.http.BoundedInput` gives the same answers before a body is read).
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from monitor.logs import get_logger
from monitor.triage import registry_edit
from monitor.triage import registry_topic as rt
from monitor.triage.incidents import parse_since

if TYPE_CHECKING:
    from monitor.triage.service import Triage

log = get_logger("framewatch.triage")

STATIC_DIR = Path(__file__).resolve().parent / "static"
UI_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
CANDIDATE_ID = re.compile(r"cand_[0-9a-f]{1,32}")  # always fullmatch
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no credentials or a wrong token: send Authorization: Bearer <FRAMEWATCH_ADMIN_TOKEN>"},
    403: {"description": "admin endpoints disabled (FRAMEWATCH_ADMIN_TOKEN not set)"},
    404: {"description": "no such cluster or candidate"},
    409: {"description": "conflict: the id exists, or (file edits) the registry is the packaged default or not "
                         "writable"},
    422: {"description": "an id does not match its pattern, or the edited registry would not validate"},
    503: {"description": "the registry topic could not be written"},
}
_bearer = HTTPBearer(auto_error=False, description="FRAMEWATCH_ADMIN_TOKEN")
_CREDENTIALS = Depends(_bearer)  # optional: read endpoints show more to an admin


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


def _is_admin(token: str | None, creds: HTTPAuthorizationCredentials | None) -> bool:
    return bool(token and creds is not None and creds.credentials
                and hmac.compare_digest(creds.credentials.encode("utf-8"), token.encode("utf-8")))


def _require_admin(token: str | None, creds: HTTPAuthorizationCredentials | None) -> str:
    """The caller's identity for the audit trail (:func:`monitor.triage.registry_topic.identity`), or 401/403."""
    if not token:
        raise HTTPException(403, "admin endpoints are disabled: set FRAMEWATCH_ADMIN_TOKEN to enable them")
    if creds is None or not creds.credentials:
        raise HTTPException(401, "missing credentials: send 'Authorization: Bearer <FRAMEWATCH_ADMIN_TOKEN>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not _is_admin(token, creds):
        raise HTTPException(401, "wrong admin token", headers={"WWW-Authenticate": "Bearer"})
    return rt.identity(token)


def _check_cluster_id(cluster_id: str) -> None:
    if not registry_edit.valid_cluster_id(cluster_id):
        raise HTTPException(422, f"cluster id must match {registry_edit.CLUSTER_ID.pattern}")


def build_router(triage: Triage) -> APIRouter:  # noqa: C901 - one closure per route
    """The triage routes, bound to ``triage`` (what :meth:`Triage.router` returns)."""
    r = APIRouter()

    def require_admin(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
        return _require_admin(triage.settings.admin_token, creds)

    admin = Depends(require_admin)  # -> the caller's identity, for the audit trail

    @r.get("/v1/incidents", tags=["triage"], summary="Recent flagged events, from the flagged topic")
    def incidents(cluster: str | None = Query(None, description="registry id, or 'none'"),
                  framing: Literal["none", "exact", "semantic"] | None = Query(None),
                  candidate: str | None = Query(None, description="emerging candidate id"),
                  since: str | None = Query(None, description="epoch seconds or ISO 8601"),
                  limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        if cluster is not None and not registry_edit.valid_cluster_id(cluster):
            raise HTTPException(422, f"cluster must be 'none' or match {registry_edit.CLUSTER_ID.pattern}")
        if candidate is not None and not CANDIDATE_ID.fullmatch(candidate):
            raise HTTPException(422, f"candidate must match {CANDIDATE_ID.pattern}")
        try:
            since_ts = parse_since(since)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        items = triage.incidents.query(cluster=cluster, framing=framing, since=since_ts, limit=limit,
                                     candidate=candidate)
        return {"incidents": items, "count": len(items), "redaction": triage.redact.policy,
                "topic": triage.settings.flagged_topic, "held": len(triage.incidents), "shared": triage.shared}

    @r.get("/v1/clusters", tags=["triage"],
           summary="Registry clusters with counts, failure rates, Wilson intervals and the containment gap")
    def clusters(creds: HTTPAuthorizationCredentials | None = _CREDENTIALS) -> dict[str, Any]:
        return triage.clusters_view(admin=_is_admin(triage.settings.admin_token, creds))

    @r.get("/v1/candidates", tags=["triage"],
           summary="Emerging framings: unmatched segments whose failure rate is significantly elevated")
    def candidates(all: bool = Query(False, description="also list candidates that are not significant"),
                   limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
        items = [c for c in triage.emerging.snapshot(significant_only=not all, limit=limit)
                 if c["id"] not in triage.view.promoted]
        return {"candidates": items, "tracked": len(triage.emerging),
                "significant": triage.emerging.significant_count(),
                "min_events": triage.emerging.cfg.min_events, "evidence": triage.view.stats(),
                "redaction": triage.redact.policy, "shared": triage.shared}

    @r.get("/v1/registry", tags=["admin"], responses=ADMIN_RESPONSES,
           summary="The registry in use: base file, registry-topic edits and their audit trail")
    def registry_state(who: str = admin) -> dict[str, Any]:
        out: dict[str, Any] = {"path": str(triage.registry_path), "digest": triage.detector.registry.digest,
                               "topic": triage.settings.registry_topic or None}
        if triage.overlay is not None:
            _, entries, _ = triage.overlay.snapshot()
            out["edits"] = {cid: ("deleted" if c is None else c) for cid, c in entries.items()}
            out["audit"] = list(triage.overlay.audit)
        return out

    @r.post("/v1/clusters", tags=["admin"], responses=ADMIN_RESPONSES, status_code=201,
            summary="Add a cluster to the registry (every replica hot-reloads it)")
    def add_cluster(body: ClusterIn, who: str = admin) -> dict[str, Any]:
        if triage.overlay is None:
            return triage.edit_file(lambda: registry_edit.add_cluster(triage.registry_path, body.id, body.phrases,
                                                                     body.description))
        return triage.edit_topic(body.id, lambda raw: ("put", registry_edit.new_cluster(
            raw, body.id, body.phrases, body.description)), who)

    @r.delete("/v1/clusters/{cluster_id}", tags=["admin"], responses=ADMIN_RESPONSES,
              summary="Remove a cluster from the registry (every replica hot-reloads it)")
    def delete_cluster(cluster_id: str, who: str = admin) -> dict[str, Any]:
        _check_cluster_id(cluster_id)
        if triage.overlay is None:
            return triage.edit_file(lambda: registry_edit.remove_cluster(triage.registry_path, cluster_id))

        def plan(raw: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
            registry_edit.check_removable(raw, cluster_id)
            base, _ = rt.read_base(triage.registry_path)
            in_base = any(isinstance(c, dict) and c.get("id") == cluster_id for c in base.get("clusters") or [])
            return ("delete" if in_base else "revert"), None
        return triage.edit_topic(cluster_id, plan, who)

    @r.post("/v1/clusters/{cluster_id}/phrases", tags=["admin"], responses=ADMIN_RESPONSES,
            summary="Add phrases to a cluster (every replica hot-reloads it)")
    def add_phrases(cluster_id: str, body: PhrasesIn, who: str = admin) -> dict[str, Any]:
        _check_cluster_id(cluster_id)
        if triage.overlay is None:
            return triage.edit_file(lambda: registry_edit.add_phrases(triage.registry_path, cluster_id, body.phrases))
        planned: dict[str, Any] = {}

        def plan(raw: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
            planned.update(registry_edit.with_phrases(raw, cluster_id, body.phrases))
            return "put", dict(planned)
        out = triage.edit_topic(cluster_id, plan, who)
        return {**out, "result": planned["phrases"]}

    @r.post("/v1/candidates/{candidate_id}/promote", tags=["admin"], responses=ADMIN_RESPONSES, status_code=201,
            summary="Promote an emerging candidate into a registry cluster (every replica hot-reloads it)")
    def promote(candidate_id: str, body: Annotated[PromoteIn | None, Body()] = None,
                who: str = admin) -> dict[str, Any]:
        if not CANDIDATE_ID.fullmatch(candidate_id):
            raise HTTPException(422, f"candidate id must match {CANDIDATE_ID.pattern}")
        body = body or PromoteIn(id=None, description=None, phrases=None)
        try:
            known = triage.emerging.phrases(candidate_id)
        except KeyError:
            raise HTTPException(404, f"no candidate {candidate_id!r} (it may have been evicted)") from None
        if candidate_id in triage.view.promoted:
            raise HTTPException(404, f"candidate {candidate_id!r} is already in the registry")
        phrases = body.phrases or known
        cluster_id = body.id or f"emerging_{candidate_id}"
        description = body.description or f"Promoted from emerging candidate {candidate_id}"
        source = f"framewatch candidate {candidate_id}"
        if triage.overlay is None:
            out = triage.edit_file(lambda: registry_edit.add_cluster(
                triage.registry_path, cluster_id, phrases, description, source=source))
            triage.emerging.remove(candidate_id)
            triage.view.promoted.add(candidate_id)
        else:
            out = triage.edit_topic(cluster_id, lambda raw: ("put", registry_edit.new_cluster(
                raw, cluster_id, phrases, description, source)), who)
        log.info("candidate_promoted", candidate=candidate_id, cluster=cluster_id, phrases=len(phrases), by=who)
        return {**out, "cluster": cluster_id, "phrases": [triage.redact(p) for p in phrases]}

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
