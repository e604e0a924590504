"""Sentence embeddings with all-MiniLM-L6-v2 through onnxruntime: no torch at run time.

The transformer is the scarce resource on a sidecar's CPU budget, so this module does three things
that matter for throughput:

* an LRU cache keyed by a hash of the text, so a segment seen before (a system prompt shared by many
  requests) is never embedded twice;
* length-sorted batches padded to the longest member of each batch (not to a fixed 128/256), which is
  ~2.5x faster than fixed padding on real text;
* truncation at ``max_tokens`` (256 by default): the tokenizer shipped with the model truncates *and
  pads* to 128, so both are overridden here.

The default model file is the per-channel int8 export (``model.int8.onnx``, ~2x faster than fp32 at 64 tokens here).
Its activations are quantised dynamically, with one scale per run, so it embeds one text per run: batched,
a text's vector would depend on its neighbours.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from monitor.settings import DEFAULT_EMBEDDING_ONNX_FILE, Settings, default_model_dir

# Set in the metadata of a model whose output depends on what else is in the batch (dynamic int8: one
# activation scale per run); such a model embeds one text per run (monitor._export._mark_batch_dependent).
BATCH_DEPENDENT_KEY = "framewatch.batch_dependent"


class Embeds(Protocol):
    """What the detector, calibration and the audit need from an embedder: texts in, unit vectors out.

    :class:`Embedder` is the one implementation; the Protocol keeps its collaborators from depending on
    onnxruntime, and says in one place which three members they use.
    """

    @property
    def dim(self) -> int:
        """Width of a vector (384 for MiniLM)."""
        ...

    @property
    def model_file(self) -> str:
        """The model file the vectors come from (e.g. ``model.int8.onnx``); recorded with calibrated thresholds."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``texts`` -> float32 array (len(texts), dim), rows L2-normalised."""
        ...


class ModelNotBuiltError(FileNotFoundError):
    """The ONNX model is missing: run ``framewatch build-model`` (or ``make model``)."""


class Embedder:
    """Embeds texts into L2-normalised 384-d vectors (cosine similarity = dot product)."""

    def __init__(self, session: ort.InferenceSession, tokenizer: Tokenizer, *, cache_size: int = 50_000,
                 batch_size: int = 64, max_tokens: int = 256, model_file: str = "") -> None:
        self._session = session
        self.model_file = model_file  # e.g. "model.int8.onnx"; calibrate records it in the registry
        self._tokenizer = tokenizer
        self._tokenizer.enable_truncation(max_length=max_tokens)
        self._tokenizer.no_padding()  # the shipped tokenizer pads to 128; we pad per batch ourselves
        self._input_names = {i.name for i in session.get_inputs()}
        self.dim = int(session.get_outputs()[0].shape[-1])
        # One text per run for a dynamically quantised model, so that a text's vector (and so its verdict)
        # never depends on its neighbours. Costs nothing measurable on short segments (615 benchmark
        # segments: 1.16 s one by one, 1.21 s in batches of 64), which need no padding when alone.
        batch_dependent = session.get_modelmeta().custom_metadata_map.get(BATCH_DEPENDENT_KEY) == "true"
        self.batch_size = 1 if batch_dependent else batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's WordPiece tokenizer (truncating at ``max_tokens``, no padding)."""
        return self._tokenizer

    @classmethod
    def load(cls, model_dir: str | Path | None = None, *, onnx_file: str = DEFAULT_EMBEDDING_ONNX_FILE,
             cache_size: int = 50_000, threads: int = 0, batch_size: int = 64, max_tokens: int = 256) -> Embedder:
        model_dir = Path(model_dir) if model_dir else default_model_dir()
        model_path = model_dir / onnx_file
        tokenizer_path = model_dir / "tokenizer.json"
        if not model_path.exists() or not tokenizer_path.exists():
            raise ModelNotBuiltError(
                f"no embedding model at {model_path}: run 'framewatch build-model' (or 'make model') first"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        return cls(session, Tokenizer.from_file(str(tokenizer_path)), cache_size=cache_size,
                   batch_size=batch_size, max_tokens=max_tokens, model_file=onnx_file)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` -> float32 array (len(texts), dim); repeated texts come from the cache."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[bytes, list[int]] = {}
        missing_text: dict[bytes, str] = {}
        for i, text in enumerate(texts):
            key = _key(text)
            row = self._cache.get(key) if self.cache_size else None
            if row is not None:
                self._cache.move_to_end(key)
                out[i] = row
                self.cache_hits += 1
            else:
                if key not in missing:
                    missing_text[key] = text
                    self.cache_misses += 1
                else:
                    self.cache_hits += 1  # a duplicate inside this call is embedded once
                missing.setdefault(key, []).append(i)
        if missing:
            keys = list(missing)
            vectors = self._embed_uncached([missing_text[k] for k in keys])
            for key, vec in zip(keys, vectors, strict=True):
                out[missing[key]] = vec
                if self.cache_size:
                    self._cache[key] = vec
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    def _embed_uncached(self, texts: list[str]) -> np.ndarray:
        # Tokenise once (no padding), sort by length, pad each batch to its own longest member.
        encodings = self._tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(lengths, kind="stable")
        result = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = int(lengths[idx].max())
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = lengths[i]
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            result[idx] = self._session.run(None, feeds)[0]
        return result


def configured_embedder(model_dir: str | Path | None = None, *, settings: Settings | None = None,
                        **options: Any) -> Embedder:
    """The embedder the sidecar loads: ``Settings.model_dir``, ``embedding_onnx_file``, ``embedding_max_tokens``,
    ``embedding_batch_size``, ``embedding_cache_size`` and ``onnx_threads`` (``$FRAMEWATCH_*`` or the
    ``$FRAMEWATCH_CONFIG`` file); ``options`` override them (``Embedder.load`` keywords).

    The sidecar and the offline commands (calibrate, eval-framing, detect, audit) all load through this, so
    thresholds are calibrated, and accuracy measured, with the model file and truncation the running sidecar
    embeds with. Raises :class:`~monitor.settings.SettingsError` for a bad setting.
    """
    settings = settings or Settings.load()
    kwargs: dict[str, Any] = {"onnx_file": settings.embedding_onnx_file, "cache_size": settings.embedding_cache_size,
                              "threads": settings.onnx_threads, "batch_size": settings.embedding_batch_size,
                              "max_tokens": settings.embedding_max_tokens}
    kwargs.update(options)
    return Embedder.load(model_dir or settings.model_dir, **kwargs)


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
