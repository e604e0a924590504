"""Registry edits shared through a compacted Kafka topic: every replica applies the same edits.

Why a topic: an admin edit (or a *Promote*) used to write one pod's registry file, and the other replicas
never learned of it. Now the file (or ConfigMap) registry is the **base**, and edits are records on
``FRAMEWATCH_REGISTRY_TOPIC`` (``cleanup.policy=compact``, one partition), keyed by cluster id:

* ``{"op": "put", "cluster": {...}}`` — the cluster as it should be (added, or with more phrases);
* ``{"op": "delete"}`` — a cluster of the base removed (a marker, not a tombstone, so compaction keeps it);
* a tombstone (null value) — forget the key: a cluster that only the topic had is gone, one of the base is
  back as the file has it.

Headers ``framewatch.by`` (the caller's identity: a fingerprint of the admin token), ``framewatch.at`` and
``framewatch.op`` are the audit trail (tombstones included). Every replica reads the topic from its
beginning (:class:`~monitor.triage.follow.TopicFollower`), keeps the latest record per key
(:class:`RegistryOverlay`: bounded by the number of clusters) and :class:`RegistrySource` — a
``RegistryWatcher`` — rebuilds the effective registry (base + overlay, validated by the same
``parse_registry``) between batches, on the consume loop's thread, when the file or the overlay changed. An
overlay that would not validate is refused as a bad hand edit is: the previous registry stays.

On a broker that does not compact, the topic simply keeps every edit: readers still end with the latest
record per key. The effective version is ``framewatch_registry_version_info{digest}`` (one series).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from monitor.framing.registry import Registry, RegistryError, RegistryWatcher, load_registry, parse_registry
from monitor.logs import get_logger
from monitor.triage.follow import Message

log = get_logger("framewatch.registry_topic")

CLUSTER_ID = re.compile(r"[a-z][a-z0-9_]{0,62}")  # as monitor.framing.registry; always fullmatch
AUDIT_ENTRIES = 200
MAX_OVERLAY = 10_000  # keys beyond this are refused: a registry that large is not a registry


def identity(token: str) -> str:
    """Who made an edit, as far as the token tells: a fingerprint (never the token itself)."""
    return "token:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


class RegistryOverlay:
    """The latest registry-topic record per cluster id, and the last edits for the audit trail."""

    def __init__(self, audit_entries: int = AUDIT_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any] | None] = {}  # id -> cluster, or None = removed from the base
        self.audit: deque[dict[str, Any]] = deque(maxlen=audit_entries)
        self.version = 0  # records applied
        self.positions: dict[int, int] = {}  # partition -> last offset applied

    def apply(self, msg: Message) -> None:
        """One record of the registry topic (raises ValueError for a record that is not an edit)."""
        try:
            cid = (msg.key or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("key is not UTF-8") from None
        if not CLUSTER_ID.fullmatch(cid):
            raise ValueError(f"key {cid[:70]!r} is not a cluster id")
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (msg.headers or [])}
        op: Any = "revert"
        cluster: Any = None
        if msg.value is not None:
            doc = json.loads(msg.value)
            op = doc.get("op") if isinstance(doc, dict) else None
            cluster = doc.get("cluster") if op == "put" else None
            if op == "put" and not (isinstance(cluster, dict) and cluster.get("id") == cid):
                raise ValueError("'put' needs a 'cluster' mapping with the record key as its id")
            if op not in ("put", "delete"):
                raise ValueError(f"unknown op {op!r}")
        with self._lock:
            if op != "revert" and cid not in self._entries and len(self._entries) >= MAX_OVERLAY:
                raise ValueError(f"more than {MAX_OVERLAY} edited clusters")
            if op == "revert":
                self._entries.pop(cid, None)
            else:
                self._entries.pop(cid, None)
                self._entries[cid] = cluster
            self.version += 1
            self.positions[msg.partition] = msg.offset
            self.audit.append({"cluster": cid, "op": op, "by": headers.get("framewatch.by"),
                               "at": headers.get("framewatch.at"), "offset": msg.offset})

    def snapshot(self) -> tuple[int, dict[str, dict[str, Any] | None], dict[int, int]]:
        with self._lock:
            return self.version, copy.deepcopy(self._entries), dict(self.positions)

    def __len__(self) -> int:
        return len(self._entries)


def effective_raw(base: dict[str, Any], entries: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The base registry document with the overlay applied; clusters only the overlay has come last, by id
    (an order independent of the topic's history, so every reader, before or after compaction, agrees)."""
    raw = copy.deepcopy(base)
    out, base_ids = [], set()
    for c in raw.get("clusters") or []:
        cid = c.get("id") if isinstance(c, dict) else None
        base_ids.add(cid)
        if cid not in entries:
            out.append(c)
        elif entries[cid] is not None:
            out.append(copy.deepcopy(entries[cid]))
    extra = sorted((copy.deepcopy(c) for cid, c in entries.items() if c is not None and cid not in base_ids),
                   key=lambda c: str(c.get("id")))
    raw["clusters"] = out + extra
    return raw


def overlay_digest(base_digest: str, entries: dict[str, dict[str, Any] | None]) -> str:
    if not entries:
        return base_digest
    body = json.dumps(entries, sort_keys=True, ensure_ascii=False).encode("utf-8", "replace")
    return hashlib.sha256(base_digest.encode() + b"\0" + body).hexdigest()[:16]


def build_registry(path: Path, base_raw: dict[str, Any], base_digest: str,
                   entries: dict[str, dict[str, Any] | None]) -> Registry:
    """The effective registry (validated); raises RegistryError."""
    if not entries:
        return load_registry(path)
    registry = parse_registry(effective_raw(base_raw, entries), source=f"{path} + registry topic",
                              base_dir=path.parent)
    return replace(registry, path=path, digest=overlay_digest(base_digest, entries))


def read_base(path: Path) -> tuple[dict[str, Any], str]:
    data = path.read_bytes()
    raw = yaml.safe_load(data)
    if not isinstance(raw, dict):
        raise RegistryError(f"{path}: the top level must be a mapping with a 'clusters' list")
    return raw, hashlib.sha256(data).hexdigest()[:16]


class RegistrySource(RegistryWatcher):
    """The registry file plus the registry topic's overlay; ``check()`` (once per consume-loop iteration)
    reloads when either changed. ``applied`` tells the admin API when its edit is in use."""

    def __init__(self, path: str | Path, overlay: RegistryOverlay, on_change: Callable[[Registry], None],
                 on_error: Callable[[Exception], None]) -> None:
        super().__init__(path, on_change=on_change, on_error=on_error)
        self.overlay = overlay
        self._version = 0
        self._base: tuple[dict[str, Any], str] | None = None
        self.positions: dict[int, int] = {}
        self.effective_digest: str | None = None

    def check(self, force: bool = False) -> None:
        stamp = self._stat()
        version = self.overlay.version
        base_changed = force or stamp != self._stamp
        if not base_changed and version == self._version:
            return
        self._stamp = stamp
        if stamp is None:
            self.on_error(RegistryError(f"registry {self.path} disappeared; keeping the loaded one"))
            return
        version, entries, positions = self.overlay.snapshot()
        self._version = version
        try:
            if base_changed or self._base is None:
                self._base = read_base(self.path)
            registry = build_registry(self.path, self._base[0], self._base[1], entries)
        except (RegistryError, OSError, yaml.YAMLError) as exc:
            self.positions = positions  # seen (and refused): the admin API stops waiting
            self.on_error(exc if isinstance(exc, RegistryError) else RegistryError(f"{self.path}: {exc}"))
            return
        self.effective_digest = registry.digest
        if entries:
            log.info("registry_overlay_applied", clusters_edited=len(entries), digest=registry.digest)
        self.on_change(registry)
        self.positions = positions  # only now: the admin API then finds the detector using it

    def applied(self, partition: int, offset: int) -> bool:
        return self.positions.get(partition, -1) >= offset


def edit_record(op: str, cluster: dict[str, Any] | None, who: str) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """The value and audit headers of one registry-topic record (``op``: put, delete or revert)."""
    at = datetime.now(UTC).isoformat()
    headers = [("framewatch.by", who.encode()), ("framewatch.at", at.encode()), ("framewatch.op", op.encode())]
    if op == "revert":
        return None, headers
    doc: dict[str, Any] = {"op": op, "by": who, "at": at}
    if op == "put":
        doc["cluster"] = cluster
    return json.dumps(doc, ensure_ascii=False).encode("utf-8"), headers
