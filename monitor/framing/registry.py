"""The trigger registry: which framings to look for, loaded from YAML and validated before use.

A registry is edited by people while the sidecar runs, so every mistake must surface as one
:class:`RegistryError` naming the file, the cluster and the field, and a bad edit must never replace a
good registry (:class:`RegistryWatcher` keeps the old one). The schema is documented in docs/registry.md.

Learned weights (written by ``framewatch calibrate``) live next to the YAML in an ``.npz`` file named by
the registry's ``model`` key; they are loaded here, together with the YAML, so that a hot reload swaps
phrases, thresholds and weights in one step. ``.npz`` is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from monitor.framing.lexical import LexicalFeatures
from monitor.framing.model_file import ClusterModel, ModelFileError, read_model
from monitor.framing.segmenting import POSITIONS as SEGMENT_POSITIONS

PACKAGE_DATA = Path(__file__).resolve().parent.parent / "data"
DEFAULT_REGISTRY = PACKAGE_DATA / "triggers.yaml"
POSITIONS = (*SEGMENT_POSITIONS, "any")  # what a cluster's ``positions`` may name
SCHEMA_VERSION = 1
_ID = re.compile(r"[a-z][a-z0-9_]{0,62}")  # a Prometheus label value: keep it tame; always fullmatch (never `$`)
_CLUSTER_KEYS = {"id", "description", "phrases", "positions", "threshold", "min_threshold", "negatives", "source",
                 "exact"}
_TOP_KEYS = {"version", "description", "threshold", "target_fpr", "model", "clusters", "calibration"}


class RegistryError(ValueError):
    """The registry file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Cluster:
    """One trigger framing: its known phrases and how strict semantic matching is for it."""

    id: str
    description: str
    phrases: tuple[str, ...]
    positions: tuple[str, ...] = ("any",)
    threshold: float | None = None  # None = the registry default
    min_threshold: float | None = None  # calibrate never sets ``threshold`` below this (None = its --min-threshold)
    negatives: tuple[str, ...] = ()
    source: str | None = None
    exact: bool = True  # report verbatim occurrences as framing="exact"

    def allows(self, position: str) -> bool:
        return "any" in self.positions or position in self.positions


@dataclass(frozen=True)
class Registry:
    clusters: tuple[Cluster, ...]
    threshold: float = 0.5
    target_fpr: float | None = None
    path: Path | None = None
    model_path: Path | None = None
    models: Mapping[str, ClusterModel] = field(default_factory=dict)
    static: Mapping[str, np.ndarray] = field(default_factory=dict)  # token table for the prefilter
    lexicon: Mapping[str, int] = field(default_factory=dict)  # trigger words for monitor.framing.spelling
    lexical: LexicalFeatures | None = None  # the word features the models' ``lexical_weights`` expect
    digest: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict)

    def cluster_ids(self) -> list[str]:
        return [c.id for c in self.clusters]

    def cluster(self, cluster_id: str) -> Cluster:
        for c in self.clusters:
            if c.id == cluster_id:
                return c
        raise KeyError(cluster_id)

    def threshold_for(self, cluster: Cluster) -> float:
        return self.threshold if cluster.threshold is None else cluster.threshold


def load_registry(path: str | Path | None = None, *, with_model: bool = True) -> Registry:
    """Read and validate a registry; ``None`` = the one shipped in the package. Raises RegistryError.

    ``with_model=False`` skips the learned weights (``calibrate`` uses it to retrain from scratch).
    """
    path = Path(path) if path is not None else DEFAULT_REGISTRY
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RegistryError(f"cannot read registry {path}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from None
    registry = parse_registry(raw, source=str(path), base_dir=path.parent, with_model=with_model)
    return Registry(**{**registry.__dict__, "path": path, "digest": hashlib.sha256(data).hexdigest()[:16]})


def parse_registry(raw: Any, *, source: str = "<registry>", base_dir: Path | None = None,
                   with_model: bool = True) -> Registry:
    """Validate an already-parsed YAML document (also used by tests and ``calibrate``)."""
    if not isinstance(raw, dict):
        raise RegistryError(f"{source}: the top level must be a mapping with a 'clusters' list")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise RegistryError(f"{source}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    version = raw.get("version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise RegistryError(f"{source}: version {version!r} is not supported (expected {SCHEMA_VERSION})")
    threshold = _unit_float(raw.get("threshold", 0.5), f"{source}: threshold")
    target_fpr = raw.get("target_fpr")
    if target_fpr is not None:
        target_fpr = _unit_float(target_fpr, f"{source}: target_fpr")
    items = raw.get("clusters")
    if not isinstance(items, list) or not items:
        raise RegistryError(f"{source}: 'clusters' must be a non-empty list")
    clusters: list[Cluster] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        cluster = _parse_cluster(item, f"{source}: clusters[{i}]")
        if cluster.id in seen:
            raise RegistryError(f"{source}: clusters[{i}]: duplicate id {cluster.id!r}")
        seen.add(cluster.id)
        clusters.append(cluster)
    model_path = None
    models: dict[str, ClusterModel] = {}
    static: dict[str, np.ndarray] = {}
    lexicon: dict[str, int] = {}
    lexical: LexicalFeatures | None = None
    if raw.get("model") is not None and with_model:
        if not isinstance(raw["model"], str) or not raw["model"].strip():
            raise RegistryError(f"{source}: 'model' must be a file name (the .npz written by calibrate)")
        model_path = _resolve(raw["model"], base_dir)
        models, static, lexicon, lexical = _load_models(model_path, seen, source)
    return Registry(clusters=tuple(clusters), threshold=threshold, target_fpr=target_fpr,
                    model_path=model_path, models=models, static=static, lexicon=lexicon, lexical=lexical,
                    raw=raw)


def _parse_cluster(item: Any, where: str) -> Cluster:
    if not isinstance(item, dict):
        raise RegistryError(f"{where}: each cluster must be a mapping with at least 'id' and 'phrases'")
    cid = item.get("id")
    if not isinstance(cid, str) or not _ID.fullmatch(cid):
        raise RegistryError(f"{where}: 'id' must match {_ID.pattern} (lower-case, digits, '_'), got {cid!r}")
    where = f"{where} (id {cid!r})"
    unknown = set(item) - _CLUSTER_KEYS
    if unknown:
        raise RegistryError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_CLUSTER_KEYS)}")
    phrases = _str_list(item.get("phrases"), f"{where}: 'phrases'", required=True)
    negatives = _str_list(item.get("negatives"), f"{where}: 'negatives'", required=False)
    positions = _str_list(item.get("positions", ["any"]), f"{where}: 'positions'", required=True)
    bad = [p for p in positions if p not in POSITIONS]
    if bad:
        raise RegistryError(f"{where}: unknown position(s) {bad}; allowed: {list(POSITIONS)}")
    threshold = item.get("threshold")
    if threshold is not None:
        threshold = _unit_float(threshold, f"{where}: 'threshold'")
    min_threshold = item.get("min_threshold")
    if min_threshold is not None:
        min_threshold = _unit_float(min_threshold, f"{where}: 'min_threshold'")
    description = item.get("description", "")
    if not isinstance(description, str):
        raise RegistryError(f"{where}: 'description' must be a string")
    source = item.get("source")
    if source is not None and not isinstance(source, str):
        raise RegistryError(f"{where}: 'source' must be a string")
    exact = item.get("exact", True)
    if not isinstance(exact, bool):
        raise RegistryError(f"{where}: 'exact' must be true or false")
    return Cluster(id=cid, description=description, phrases=phrases, positions=positions,
                   threshold=threshold, min_threshold=min_threshold, negatives=negatives, source=source,
                   exact=exact)


def _str_list(value: Any, where: str, *, required: bool) -> tuple[str, ...]:
    if value is None and not required:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or (required and not value):
        raise RegistryError(f"{where} must be a {'non-empty ' if required else ''}list of strings")
    out = []
    for j, v in enumerate(value):
        if not isinstance(v, str) or not v.strip():
            raise RegistryError(f"{where}[{j}] must be a non-empty string, got {v!r}")
        out.append(v.strip())
    return tuple(out)


def _unit_float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise RegistryError(f"{where} must be a number between 0 and 1, got {value!r}")
    return float(value)


def _resolve(name: str, base_dir: Path | None) -> Path:
    """A model file relative to the registry's folder, else the package's data folder."""
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate
    if base_dir is not None and (base_dir / candidate).exists():
        return base_dir / candidate
    return PACKAGE_DATA / candidate


def _load_models(path: Path, cluster_ids: set[str], source: str
                 ) -> tuple[dict[str, ClusterModel], dict[str, np.ndarray], dict[str, int], LexicalFeatures | None]:
    """The model file's weights, static token table, spelling lexicon and word-feature definition."""
    try:
        model = read_model(path, cluster_ids)
    except ModelFileError as exc:
        raise RegistryError(f"{source}: {exc}") from None
    return dict(model.models), dict(model.static), dict(model.lexicon), model.lexical


class RegistryWatcher:
    """Reload a registry file when it changes; a bad edit is reported and the old registry stays.

    ``check()`` is cheap (one ``stat``) so the pipeline can call it once per batch. A file that failed
    to load is not retried until it changes again, so a broken edit yields one error, not one per batch.
    """

    def __init__(self, path: str | Path, on_change: Callable[[Registry], None],
                 on_error: Callable[[Exception], None]) -> None:
        self.path = Path(path)
        self.on_change = on_change
        self.on_error = on_error
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def check(self, force: bool = False) -> None:
        """Reload if the file changed (or unconditionally with ``force``, e.g. after SIGHUP)."""
        stamp = self._stat()
        if stamp == self._stamp and not force:
            return
        self._stamp = stamp
        if stamp is None:
            self.on_error(RegistryError(f"registry {self.path} disappeared; keeping the loaded one"))
            return
        try:
            registry = load_registry(self.path)
        except RegistryError as exc:
            self.on_error(exc)
            return
        self.on_change(registry)
