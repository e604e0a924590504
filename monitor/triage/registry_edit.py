"""Edits of the trigger registry file for the admin API: add or remove a cluster, add phrases.

Why edit the file rather than the in-memory registry: the file is the single source of truth every
replica (and the next restart) loads, and the running sidecar already reloads it on change through
``RegistryWatcher`` -> ``on_change``. So an edit here is: read the YAML, change it, validate the result
with :func:`monitor.framing.registry.parse_registry` (the same rules as a hand edit), and only then replace the
file atomically (temp file in the same folder, fsync, ``os.replace``): a reader never sees half a file and
an invalid edit never reaches disk. Comments other than the file's leading header are not preserved.

With a registry topic (``FRAMEWATCH_REGISTRY_TOPIC``, the default) the file is not written at all: the
service plans the edit with the same functions (:func:`new_cluster`, :func:`with_phrases`,
:func:`check_removable`, :func:`validate`) against the effective registry and publishes the result to the
topic (monitor.triage.registry_topic), which every replica applies.

The packaged default registry is never edited (it lives inside the installed package and is replaced by
upgrades): set ``FRAMEWATCH_REGISTRY_PATH`` to a writable copy.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml

from monitor.framing.registry import DEFAULT_REGISTRY, RegistryError, parse_registry

_lock = threading.Lock()  # one edit at a time within a process
CLUSTER_ID = re.compile(r"[a-z][a-z0-9_]{0,62}")  # as monitor.framing.registry: always fullmatch, never `$`


def valid_cluster_id(value: object) -> bool:
    return isinstance(value, str) and CLUSTER_ID.fullmatch(value) is not None


class RegistryEditError(ValueError):
    """An edit was refused; ``status`` is the HTTP status the admin API answers with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def check_writable(path: Path) -> None:
    """Refuse the packaged default and files (or folders) we cannot write, with the fix in the message."""
    if path.resolve() == DEFAULT_REGISTRY.resolve():
        raise RegistryEditError(
            f"the registry in use is the packaged default ({path}); admin edits need a writable registry: "
            "copy it and set FRAMEWATCH_REGISTRY_PATH to the copy", status=409)
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise RegistryEditError(
            f"the registry file {path} (or its folder) is not writable; point FRAMEWATCH_REGISTRY_PATH at a "
            "writable file", status=409)


def _read(path: Path) -> tuple[dict[str, Any], str]:
    text = path.read_text()
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict) or not isinstance(raw.get("clusters"), list):
        raise RegistryEditError(f"{path}: not a registry (no 'clusters' list)", status=409)
    return raw, _leading_comments(text)


def _leading_comments(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines) + "\n" if lines else ""


def validate(raw: dict[str, Any], source: str, base_dir: Path | None) -> None:
    """The same rules as a hand edit; 422 with parse_registry's message."""
    try:
        parse_registry(raw, source=source, base_dir=base_dir)
    except RegistryError as exc:
        raise RegistryEditError(str(exc), status=422) from None


def _write(path: Path, raw: dict[str, Any], header: str) -> None:
    validate(raw, str(path), path.parent)
    body = header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=120)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _find(raw: dict[str, Any], cluster_id: str) -> dict[str, Any] | None:
    return next((c for c in raw["clusters"] if isinstance(c, dict) and c.get("id") == cluster_id), None)


def _phrases(phrases: Any) -> list[str]:
    if not isinstance(phrases, list) or not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
        raise RegistryEditError("'phrases' must be a non-empty list of non-empty strings")
    return [p.strip() for p in phrases]


def new_cluster(raw: dict[str, Any], cluster_id: str, phrases: list[str], description: str = "",
                source: str | None = None) -> dict[str, Any]:
    """The cluster to append; 409 if the id exists, 422 for a bad id or phrases."""
    if not valid_cluster_id(cluster_id):
        raise RegistryEditError(f"cluster id {cluster_id!r} must match {CLUSTER_ID.pattern} "
                                "(lower-case letters, digits, '_')")
    if _find(raw, cluster_id) is not None:
        raise RegistryEditError(f"cluster {cluster_id!r} already exists", status=409)
    item: dict[str, Any] = {"id": cluster_id, "description": description or "", "phrases": _phrases(phrases),
                            "positions": ["any"]}
    if source:
        item["source"] = source
    return item


def with_phrases(raw: dict[str, Any], cluster_id: str, phrases: list[str]) -> dict[str, Any]:
    """A copy of the cluster with ``phrases`` added (duplicates ignored); 404 if absent."""
    item = _find(raw, cluster_id)
    if item is None:
        raise RegistryEditError(f"no cluster {cluster_id!r}", status=404)
    existing = item.get("phrases") or []
    if isinstance(existing, str):
        existing = [existing]
    return {**item, "phrases": list(dict.fromkeys([*existing, *_phrases(phrases)]))}


def check_removable(raw: dict[str, Any], cluster_id: str) -> None:
    if _find(raw, cluster_id) is None:
        raise RegistryEditError(f"no cluster {cluster_id!r}", status=404)


def add_cluster(path: Path, cluster_id: str, phrases: list[str], description: str = "",
                source: str | None = None) -> None:
    """Append a cluster; 409 if the id exists, 422 if the result does not validate."""
    check_writable(path)
    with _lock:
        raw, header = _read(path)
        raw["clusters"].append(new_cluster(raw, cluster_id, phrases, description, source))
        _write(path, raw, header)


def remove_cluster(path: Path, cluster_id: str) -> None:
    """Remove a cluster; 404 if absent; 422 if it is the last one (a registry needs at least one)."""
    check_writable(path)
    with _lock:
        raw, header = _read(path)
        check_removable(raw, cluster_id)
        raw["clusters"] = [c for c in raw["clusters"] if not (isinstance(c, dict) and c.get("id") == cluster_id)]
        _write(path, raw, header)


def add_phrases(path: Path, cluster_id: str, phrases: list[str]) -> list[str]:
    """Add phrases to a cluster (duplicates ignored); returns the cluster's phrases afterwards."""
    check_writable(path)
    with _lock:
        raw, header = _read(path)
        item = with_phrases(raw, cluster_id, phrases)
        raw["clusters"] = [item if isinstance(c, dict) and c.get("id") == cluster_id else c for c in raw["clusters"]]
        _write(path, raw, header)
        return list(item["phrases"])
