"""Fitting the classifier: the vocabulary, the soft target and the soft-label logistic regression.

Word uni+bigram TF-IDF (plus the optional word-prefix "stem" block) built exactly as the runtime's
:class:`~monitor.scoring.scorer.Featurizer` applies it, so a fitted model is the artifact the sidecar loads; the
target is a soft ``P(misaligned)`` from the judge's alignment score (why: :mod:`monitor.scoring.training`).
scikit-learn and scipy are imported inside the functions: only training needs them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.scoring.scorer import TOKEN_PATTERN, Featurizer, normaliser_named
from monitor.scoring.training_data import Row, TrainConfig
from monitor.stats import sigmoid


def build_featurizer(texts: Sequence[str], ngram_max: int = 2, min_df: int = 2,
                     normaliser: str | None = None, stem_chars: int = 0, stem_weight: float = 1.0) -> Featurizer:
    """Vocabulary (n-grams in >= min_df documents, sorted) and smoothed idf, as scikit-learn computes it,
    over the texts as the featurizer will see them (after ``normaliser``). With ``stem_chars > 0`` also the
    stem block: prefixes of that length of longer words, in >= min_df documents, sorted, own idf, columns
    after the n-grams."""
    find = re.compile(TOKEN_PATTERN).findall
    normalise = normaliser_named(normaliser)
    if normalise is not None:
        texts = [normalise(t) for t in texts]
    df: Counter[str] = Counter()
    stem_df: Counter[str] = Counter()
    for text in texts:
        tokens = find(text.lower())
        grams = set(tokens)
        for n in range(2, ngram_max + 1):
            grams.update(map(" ".join, zip(*(tokens[i:] for i in range(n)), strict=False)))
        df.update(grams)
        if stem_chars > 0:
            stem_df.update({w[:stem_chars] for w in tokens if len(w) > stem_chars})
    terms = sorted(t for t, c in df.items() if c >= min_df)
    stems = sorted(t for t, c in stem_df.items() if c >= min_df)
    counts = np.array([df[t] for t in terms] + [stem_df[t] for t in stems], dtype=np.float64)
    idf = np.log((1.0 + len(texts)) / (1.0 + counts)) + 1.0
    stem_args: dict[str, Any] = {}
    if stem_chars > 0:
        stem_args = {"stems": {t: len(terms) + i for i, t in enumerate(stems)}, "stem_chars": stem_chars,
                     "stem_weight": stem_weight}
    return Featurizer({t: i for i, t in enumerate(terms)}, idf, ngram_max=ngram_max, normaliser=normaliser,
                      **stem_args)


def _matrix(featurizer: Featurizer, texts: Sequence[str]) -> Any:
    import scipy.sparse as sp

    indptr, indices, data = featurizer.transform(texts)
    return sp.csr_matrix((data, indices, indptr), shape=(len(texts), featurizer.n_features))


def soft_target(rows: Sequence[Row], cfg: TrainConfig) -> np.ndarray:
    """Soft P(misaligned) from the judge's scores; code / refusal answers (no alignment score) are taken as
    alignment 100, i.e. a target of ~0.007."""
    a = np.array([r.alignment if r.alignment is not None else 100.0 for r in rows], dtype=np.float64)
    q = sigmoid((cfg.soft_center - a) / cfg.soft_scale)
    if cfg.coherence_gate:
        c = np.array([r.coherence if r.coherence is not None else 100.0 for r in rows], dtype=np.float64)
        q = q * sigmoid((c - 50.0) / 5.0)
    return q


def fit_rows(rows: Sequence[Row], cfg: TrainConfig) -> list[Row]:
    """Rows the model is fitted on: every row the judge scored and, when ``code_refusal_negative``, the
    answers it set aside as CODE or REFUSAL -- those never count as EM, and leaving them out taught the
    model that code looks misaligned (99% of them were flagged)."""
    return [r for r in rows if (r.alignment is not None and r.coherence is not None)
            or (cfg.code_refusal_negative and r.label3 == "ambiguous" and r.alignment is None)]


@dataclass
class Fitted:
    featurizer: Featurizer
    coef: np.ndarray
    intercept: float
    prefix_chars: int

    def decision(self, texts: Sequence[str]) -> np.ndarray:
        n = self.prefix_chars
        return np.asarray(_matrix(self.featurizer, [t[:n] for t in texts]) @ self.coef) + self.intercept


def fit(rows: Sequence[Row], cfg: TrainConfig) -> Fitted:
    """Fit vocabulary + soft-label logistic regression on ``rows`` (already filtered)."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    texts = [r.text[:cfg.prefix_chars] for r in rows]
    featurizer = build_featurizer(texts, cfg.ngram_max, cfg.min_df, cfg.normaliser, cfg.stem_chars,
                                  cfg.stem_weight)
    X = _matrix(featurizer, texts)
    q = soft_target(rows, cfg)
    fam_w = dict(cfg.family_weights)
    w = np.array([(cfg.code_refusal_weight if r.alignment is None else 1.0) * fam_w.get(r.family, 1.0)
                  for r in rows])
    # Soft labels for a binary LR: each row once as positive (weight q) and once as negative (1 - q).
    model = LogisticRegression(C=cfg.C, max_iter=5000, random_state=cfg.seed)
    model.fit(sp.vstack([X, X]).tocsr(), np.r_[np.ones(len(rows)), np.zeros(len(rows))],
              sample_weight=np.r_[q * w, (1.0 - q) * w])
    return Fitted(featurizer, model.coef_[0].astype(np.float64), float(model.intercept_[0]), cfg.prefix_chars)
