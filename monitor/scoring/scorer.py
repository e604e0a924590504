"""Response misalignment scorer: word n-gram TF-IDF + a linear model, numpy only.

Why this shape: the sidecar must score every event, so the runtime is a regex tokenizer, a dict lookup per
token and one sparse dot product per response, vectorised over a batch with numpy. No scikit-learn, no torch
and no pickle at run time: the artifact (``models/classifier/``) is plain JSON (vocabulary, calibration,
threshold) plus an ``.npz`` of float arrays loaded with ``allow_pickle=False``, so loading it cannot execute
code. ``monitor.scoring.training`` builds its features with the :class:`Featurizer` below, so training and serving
cannot drift apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import numpy as np

from monitor._io import sha256_file
from monitor.settings import REPO_DIR
from monitor.stats import sigmoid

FORMAT = "framewatch-response-classifier/1"
MANIFEST = "manifest.json"
VOCAB = "vocab.json"
WEIGHTS = "weights.npz"
#: scikit-learn's default token pattern: words of two or more word characters.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
#: The stem block's definition, recorded in the manifest (``features.stem.kind``): unigram TF-IDF over the
#: first ``chars`` characters of each token longer than ``chars``. Bump when the definition changes.
STEM_KIND = "word-prefix-of-longer-words/1"


def default_classifier_dir() -> Path:
    """The classifier shipped in the repo: ``<repo>/models/classifier``."""
    return REPO_DIR / "models" / "classifier"


class ClassifierError(ValueError):
    """The classifier artifact is missing, corrupt or of an unknown format; the message says which file."""


def normaliser_named(name: str | None) -> Callable[[str], str] | None:
    """The text normaliser a manifest names (``None``: none); an unknown name is an error, not a silent
    skip, since features would then differ from training."""
    if name is None:
        return None
    from monitor.scoring import answer_format

    if name == answer_format.NAME:
        return answer_format.normalise
    raise ValueError(f"unknown answer normaliser {name!r} (this version knows {answer_format.NAME!r})")


@dataclass
class Featurizer:
    """Text -> L2-normalised sublinear TF-IDF over word 1..n-grams (a sparse CSR triple), optionally followed
    by a second block: word-prefix ("stem") unigrams.

    ``terms`` maps an n-gram ("word" or "word word") to its column. Unknown n-grams are ignored, as in
    scikit-learn's ``TfidfVectorizer`` with a fixed vocabulary, whose output this reproduces.

    ``stems`` (when ``stem_chars > 0``) maps the first ``stem_chars`` characters of a word *longer* than that
    ("manipulate", "manipulation" -> "manip"; "kill" and "sleep" get no stem) to a column after the n-gram
    columns. The stem block is a TF-IDF block of its own (own idf, own L2 norm per response), scaled by
    ``stem_weight`` and hstacked: it lets unseen inflections of a known word carry its weight (measured: +0.005
    grouped AUROC, see the model card). Short words are left out because their "stem" is the word itself, so
    the block would only count them twice (measured: worse). It reuses the word tokens: known words get their
    stem column from a precomputed array, and only out-of-vocabulary tokens cost one extra dict lookup.

    Why it is fast: Python does only the regex and one dict lookup per *word*; n-grams are looked up as
    integer keys (word ids combined) with ``np.searchsorted`` over the whole batch, and per-response counting
    is one stable sort. That is 3-4x less Python work per response than building n-gram strings.
    """

    terms: dict[str, int]
    idf: np.ndarray  # float64, one per column
    ngram_max: int = 2
    token_pattern: str = TOKEN_PATTERN
    normaliser: str | None = None  # monitor.scoring.answer_format.NAME: answers reduced to their prose first
    stems: dict[str, int] | None = None  # word prefix -> column (after the n-gram columns); None: no block
    stem_chars: int = 0
    stem_weight: float = 1.0

    def __post_init__(self) -> None:
        self._normalise = normaliser_named(self.normaliser)
        if self.stems is not None and self.stem_chars <= 0:
            raise ValueError("stems given without stem_chars > 0")
        if self.stems is None and self.stem_chars > 0:
            self.stems = {}
        self._n_terms = len(self.terms)
        if self.stems and min(self.stems.values()) < self._n_terms:
            raise ValueError("stem columns must come after the n-gram columns")
        # ``\b\w\w+\b`` and ``\w\w+`` find the same tokens (a greedy run of word characters always
        # ends at a boundary and the scan restarts after a non-word character); the latter is ~20% faster.
        pattern = r"\w\w+" if self.token_pattern == TOKEN_PATTERN else self.token_pattern
        self._findall = re.compile(pattern).findall
        words: dict[str, int] = {}
        grams: list[tuple[list[str], int]] = []
        for term, col in self.terms.items():
            parts = term.split(" ")
            if len(parts) > self.ngram_max:
                raise ValueError(f"term {term!r} is longer than ngram_max={self.ngram_max}")
            for w in parts:
                words.setdefault(w, len(words))
            if len(parts) > 1:
                grams.append((parts, col))
        self._words = words
        self._word_col = np.full(len(words), -1, dtype=np.int64)
        for w, i in words.items():
            unigram = self.terms.get(w)
            if unigram is not None:
                self._word_col[i] = unigram
        # stem column of every known word (-1: its prefix is not in the stem vocabulary)
        self._word_stem = np.full(len(words), -1, dtype=np.int64)
        if self.stems:
            k = self.stem_chars
            for w, i in words.items():
                if len(w) > k:
                    self._word_stem[i] = self.stems.get(w[:k], -1)
        base = max(1, len(words))
        if base ** self.ngram_max >= 2 ** 62:
            raise ValueError("vocabulary too large for integer n-gram keys")
        self._base = base
        self._gram_keys: dict[int, np.ndarray] = {}
        self._gram_cols: dict[int, np.ndarray] = {}
        for n in range(2, self.ngram_max + 1):
            keyed = [(self._key([words[w] for w in parts]), col) for parts, col in grams if len(parts) == n]
            keys = np.array([k for k, _ in keyed], dtype=np.int64)
            cols = np.array([c for _, c in keyed], dtype=np.int64)
            order = np.argsort(keys)
            self._gram_keys[n] = keys[order]
            self._gram_cols[n] = cols[order]

    def _key(self, ids: list[int]) -> int:
        key = 0
        for i in ids:
            key = key * self._base + i
        return key

    @property
    def n_features(self) -> int:
        return len(self.idf)

    def _hits(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(doc, column) for every in-vocabulary n-gram occurrence in the batch."""
        find = self._findall
        if self._normalise is not None:
            texts = [self._normalise(t) for t in texts]
        tokens = [find(t.lower()) for t in texts]
        lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
        flat = list(chain.from_iterable(tokens))
        ids = np.fromiter(map(self._words.get, flat, repeat(-1)), dtype=np.int64, count=len(flat))
        doc = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        known = ids >= 0
        uni = self._word_col[ids[known]]
        docs = [doc[known][uni >= 0]]
        cols = [uni[uni >= 0]]
        if self.stems:
            # known words: precomputed; unknown tokens: one dict lookup of their prefix
            scol = self._word_stem[ids] if len(self._word_stem) else np.full(len(ids), -1, dtype=np.int64)
            unknown = np.flatnonzero(~known)
            if len(unknown):
                get, k = self.stems.get, self.stem_chars
                scol[unknown] = np.fromiter(
                    (get(w[:k], -1) if len(w) > k else -1 for w in map(flat.__getitem__, unknown.tolist())),
                    dtype=np.int64, count=len(unknown))
            has = scol >= 0
            docs.append(doc[has])
            cols.append(scol[has])
        total = len(ids)
        for n in range(2, self.ngram_max + 1):
            keys_n = self._gram_keys[n]
            m = total - n + 1
            if m <= 0 or len(keys_n) == 0:
                continue
            key = ids[:m].copy()
            ok = key >= 0
            for k in range(1, n):
                nxt = ids[k:k + m]
                ok &= nxt >= 0
                key = key * self._base + nxt
            ok &= doc[:m] == doc[n - 1:n - 1 + m]  # never across two responses
            key = key[ok]
            pos = np.minimum(np.searchsorted(keys_n, key), len(keys_n) - 1)
            hit = keys_n[pos] == key
            docs.append(doc[:m][ok][hit])
            cols.append(self._gram_cols[n][pos[hit]])
        return np.concatenate(docs), np.concatenate(cols)

    def transform(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR ``(indptr, indices, data)`` of shape (len(texts), n_features), rows L2-normalised."""
        doc, col = self._hits(texts)
        # Count each (doc, column) pair once: sorted unique keys give CSR order for free. A stable (radix)
        # sort + run boundaries is ~2x faster than np.unique here.
        sorted_keys = np.sort(doc * self.n_features + col, kind="stable")
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if len(sorted_keys) else \
            np.zeros(0, dtype=np.int64)
        keys = sorted_keys[starts]
        counts = np.diff(np.r_[starts, len(sorted_keys)])
        rows = keys // self.n_features
        indices = keys - rows * self.n_features
        data = (1.0 + np.log(counts)) * self.idf[indices]
        if self.stems:
            # two blocks, each L2-normalised on its own; the stem block then scaled by stem_weight
            block = rows * 2 + (indices >= self._n_terms)
            norms = np.sqrt(np.bincount(block, weights=data * data, minlength=2 * len(texts)))
            data = data / np.where(norms > 0, norms, 1.0)[block]
            data[indices >= self._n_terms] *= self.stem_weight
        else:
            norms = np.sqrt(np.bincount(rows, weights=data * data, minlength=len(texts)))
            data = data / np.where(norms > 0, norms, 1.0)[rows]
        indptr = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=len(texts)), out=indptr[1:])
        return indptr, indices, data


def _platt(z: np.ndarray, a: float, b: float) -> np.ndarray:
    return sigmoid(a * z + b)


class ResponseScorer:
    """Per response: a calibrated probability that the LLM judge would call it misaligned.

    ``score`` looks at the first ``prefix_chars`` characters only (bounded cost per event, and what the
    model was trained on); ``misaligned = score >= threshold``.
    """

    def __init__(self, featurizer: Featurizer, coef: np.ndarray, intercept: float,
                 calibration: dict[str, Any], threshold: float, prefix_chars: int,
                 manifest: dict[str, Any] | None = None) -> None:
        self.featurizer = featurizer
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)
        self.calibration = calibration
        self.threshold = float(threshold)
        self.prefix_chars = int(prefix_chars)
        self.manifest = manifest or {}
        if calibration.get("method") == "isotonic":
            self._iso_x = np.asarray(calibration["x"], dtype=np.float64)
            self._iso_y = np.asarray(calibration["y"], dtype=np.float64)

    @classmethod
    def load(cls, path: str | Path | None = None, *, verify: bool = True,
             prefix_chars: int | None = None) -> ResponseScorer:
        """Load ``manifest.json``, ``vocab.json`` and ``weights.npz`` (no pickle) from ``path``.

        ``verify`` checks the files' sha256 against the manifest, so a half-copied artifact fails loudly
        instead of scoring garbage. ``prefix_chars`` is how much of each response is scored (the sidecar
        passes ``Settings.response_prefix_chars``); ``None`` = the manifest's, what the model was trained on.
        """
        root = Path(path) if path is not None else default_classifier_dir()
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except FileNotFoundError as exc:
            raise ClassifierError(f"no classifier at {root} (missing {MANIFEST}); "
                                  "run `framewatch train-classifier`") from exc
        except json.JSONDecodeError as exc:
            raise ClassifierError(f"{root / MANIFEST} is not valid JSON: {exc}") from exc
        if manifest.get("format") != FORMAT:
            raise ClassifierError(f"{root / MANIFEST}: unknown format {manifest.get('format')!r}, "
                                  f"expected {FORMAT!r}")
        if verify:
            for name, meta in manifest.get("files", {}).items():
                if not (root / name).exists():
                    raise ClassifierError(f"classifier file missing: {root / name}")
                if sha256_file(root / name) != meta["sha256"]:
                    raise ClassifierError(f"{root / name}: sha256 does not match {MANIFEST}")
        vocab = json.loads((root / VOCAB).read_text(encoding="utf-8"))
        terms_list = vocab["terms"]
        feat = manifest["features"]
        stem = feat.get("stem")  # absent in manifests written before the stem block existed: no block
        if stem and stem.get("kind") != STEM_KIND:
            raise ClassifierError(f"{root / MANIFEST}: unknown stem block {stem.get('kind')!r} "
                                  f"(this version knows {STEM_KIND!r})")
        stems_list = vocab.get("stems", []) if stem else []
        with np.load(root / WEIGHTS, allow_pickle=False) as npz:
            idf = np.asarray(npz["idf"], dtype=np.float64)
            coef = np.asarray(npz["coef"], dtype=np.float64)
        if not len(terms_list) + len(stems_list) == len(idf) == len(coef):
            raise ClassifierError(f"{root}: vocabulary ({len(terms_list)} n-grams + {len(stems_list)} stems), "
                                  f"idf ({len(idf)}) and coef ({len(coef)}) lengths differ")
        try:
            stem_args: dict[str, Any] = {}
            if stem:
                stem_args = {"stems": {t: len(terms_list) + i for i, t in enumerate(stems_list)},
                             "stem_chars": int(stem["chars"]), "stem_weight": float(stem["weight"])}
            featurizer = Featurizer({t: i for i, t in enumerate(terms_list)}, idf,
                                    ngram_max=int(feat["ngram_max"]), token_pattern=feat["token_pattern"],
                                    normaliser=feat.get("normaliser"), **stem_args)
        except ValueError as exc:
            raise ClassifierError(f"{root / MANIFEST}: {exc}") from None
        if prefix_chars is None:
            prefix_chars = int(manifest["prefix_chars"])
        return cls(featurizer, coef, manifest["model"]["intercept"], manifest["calibration"],
                   manifest["threshold"], prefix_chars, manifest)

    def decision_function(self, responses: Sequence[str]) -> np.ndarray:
        """Uncalibrated linear scores (log-odds of the training objective)."""
        if len(responses) == 0:
            return np.zeros(0, dtype=np.float64)
        n = self.prefix_chars
        texts = [r[:n] if n > 0 else r for r in responses]
        indptr, indices, data = self.featurizer.transform(texts)
        rows = np.repeat(np.arange(len(texts)), np.diff(indptr))
        return np.bincount(rows, weights=data * self.coef[indices], minlength=len(texts)) + self.intercept

    def calibrate(self, z: np.ndarray) -> np.ndarray:
        """Map linear scores to probabilities with the fitted calibration (Platt or isotonic)."""
        method = self.calibration.get("method")
        if method == "platt":
            return _platt(z, float(self.calibration["a"]), float(self.calibration["b"]))
        if method == "isotonic":
            return np.interp(z, self._iso_x, self._iso_y)
        raise ClassifierError(f"unknown calibration method {method!r}")

    def score(self, responses: Sequence[str]) -> np.ndarray:
        """Probabilities in [0, 1], one per response, in order."""
        return np.clip(self.calibrate(self.decision_function(responses)), 0.0, 1.0)

    def predict(self, responses: Sequence[str]) -> np.ndarray:
        """``score >= threshold`` per response."""
        return self.score(responses) >= self.threshold
