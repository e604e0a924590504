"""The framing model file (``framing_model.npz``): the one reader and the one writer of its format.

Calibration writes it, the registry loads it next to its YAML so a hot reload swaps phrases, thresholds and
weights in one step. Plain arrays only (read with ``allow_pickle=False``). Written deterministically - fixed
member order and timestamps - so an unchanged model is byte-identical and not recommitted as a new blob.

Entries::

    static/vectors, static/vocab         token table of the static prefilter (bag-of-token embeddings)
    spelling/words, spelling/counts      trigger words misspellings are corrected towards
    lexical/kind, lexical/dim, lexical/scale   the word features the weights expect (monitor.framing.lexical)
    <cluster>/w, /b                      transformer-embedding weights and bias
    <cluster>/lw                         word-feature weights (optional)
    <cluster>/pb                         one bias per position (monitor.framing.segmenting.POSITIONS; optional)
    <cluster>/sw, /sb, /st               static prefilter weights, bias and threshold
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monitor.framing.lexical import KIND as LEXICAL_KIND
from monitor.framing.lexical import LexicalFeatures
from monitor.framing.segmenting import POSITIONS

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip member can carry: no wall clock in the file


class ModelFileError(ValueError):
    """The model file cannot be used; the message says which entry and why."""


@dataclass(frozen=True)
class ClusterModel:
    """Learned linear scorers of one cluster (see monitor.framing.detector)."""

    weights: np.ndarray  # (dim,) over transformer segment embeddings
    bias: float
    static_weights: np.ndarray  # (d,) over static (bag-of-token) embeddings: the cheap prefilter
    static_bias: float
    static_threshold: float  # below this the transformer is not asked
    lexical_weights: np.ndarray | None = None  # (lexical dim,) added to the score
    position_bias: np.ndarray | None = None  # (len(POSITIONS),) added to the score by where the segment sat


@dataclass(frozen=True)
class FramingModel:
    models: Mapping[str, ClusterModel] = field(default_factory=dict)
    static: Mapping[str, np.ndarray] = field(default_factory=dict)
    lexicon: Mapping[str, int] = field(default_factory=dict)
    lexical: LexicalFeatures | None = None


def read_model(path: Path, cluster_ids: set[str]) -> FramingModel:
    """Load and validate; clusters without weights are left out (they fall back to prototype scoring)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc}") from None
    where = f"model file {path}"
    static = {k[len("static/"):]: v for k, v in arrays.items() if k.startswith("static/")}
    lexical = _lexical_of(arrays, where)
    models: dict[str, ClusterModel] = {}
    for cid in cluster_ids:
        keys = [f"{cid}/{n}" for n in ("w", "b", "sw", "sb", "st")]
        if not all(k in arrays for k in keys):
            continue
        w, b, sw, sb, st = (arrays[k] for k in keys)
        if w.ndim != 1 or sw.ndim != 1 or (static and sw.shape[0] != static["vectors"].shape[1]):
            raise ModelFileError(f"{where}: weights of {cid!r} have the wrong shape")
        lw = arrays.get(f"{cid}/lw")
        if lw is not None and (lexical is None or lw.shape != (lexical.dim,)):
            raise ModelFileError(f"{where}: word-feature weights of {cid!r} do not match its 'lexical/*' entries")
        pb = arrays.get(f"{cid}/pb")
        if pb is not None and pb.shape != (len(POSITIONS),):
            raise ModelFileError(f"{where}: position biases of {cid!r} need {len(POSITIONS)} values")
        if not all(np.all(np.isfinite(a)) for a in (w, b, sw, sb, st) + tuple(x for x in (lw, pb) if x is not None)):
            raise ModelFileError(f"{where}: weights of {cid!r} are not all finite")
        models[cid] = ClusterModel(w.astype(np.float32), float(b), sw.astype(np.float32), float(sb), float(st),
                                   None if lw is None else lw.astype(np.float32),
                                   None if pb is None else pb.astype(np.float32))
    if models and not {"vectors", "vocab"} <= set(static):
        raise ModelFileError(f"{where} lacks the static token table (static/vectors, vocab)")
    words, counts = arrays.get("spelling/words"), arrays.get("spelling/counts")
    lexicon: dict[str, int] = {}
    if words is not None and counts is not None:
        if words.shape != counts.shape:
            raise ModelFileError(f"{where}: spelling/words and spelling/counts differ in length")
        lexicon = {str(w): int(n) for w, n in zip(words.tolist(), counts.tolist(), strict=True)}
    return FramingModel(models, static, lexicon, lexical)


def write_model(path: Path, model: FramingModel) -> None:
    """Write ``model`` to ``path`` deterministically (sorted members, fixed timestamps, deflate)."""
    arrays: dict[str, np.ndarray] = {f"static/{k}": np.asarray(v) for k, v in model.static.items()}
    words = sorted(model.lexicon)
    arrays["spelling/words"] = np.array(words, dtype=str)
    arrays["spelling/counts"] = np.array([model.lexicon[w] for w in words], dtype=np.int64)
    if model.lexical is not None:
        arrays.update({"lexical/kind": np.array(LEXICAL_KIND), "lexical/dim": np.array(model.lexical.dim, np.int64),
                       "lexical/scale": np.array(model.lexical.scale, np.float32)})
    for cid, m in model.models.items():
        arrays.update({f"{cid}/w": m.weights, f"{cid}/b": np.array(m.bias, np.float32), f"{cid}/sw": m.static_weights,
                       f"{cid}/sb": np.array(m.static_bias, np.float32),
                       f"{cid}/st": np.array(m.static_threshold, np.float32)})
        if m.lexical_weights is not None:
            arrays[f"{cid}/lw"] = m.lexical_weights
        if m.position_bias is not None:
            arrays[f"{cid}/pb"] = m.position_bias
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    tmp.replace(path)


def _lexical_of(arrays: Mapping[str, np.ndarray], where: str) -> LexicalFeatures | None:
    """The ``lexical/kind``, ``lexical/dim`` and ``lexical/scale`` entries, if present."""
    if "lexical/kind" not in arrays:
        return None
    kind = str(arrays["lexical/kind"])
    if kind != LEXICAL_KIND:
        raise ModelFileError(f"{where}: word features {kind!r} are not known to this version "
                             f"(it computes {LEXICAL_KIND!r}); re-run 'framewatch calibrate'")
    try:
        return LexicalFeatures(dim=int(arrays["lexical/dim"]), scale=float(arrays["lexical/scale"]))
    except (KeyError, TypeError, ValueError):
        raise ModelFileError(f"{where}: 'lexical/dim' and 'lexical/scale' must be numbers") from None
