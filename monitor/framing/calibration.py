"""Calibration: learn per-cluster scorers and thresholds from training sentences and benign text (the library
behind ``framewatch calibrate``, :mod:`monitor.commands.calibrate`).

What is learned, and why (measured with ``framewatch eval-framing``):

* a **static token table** (every word piece of the embedder's vocabulary embedded on its own, reduced
  with PCA): a bag-of-token embedding from it costs microseconds, so it screens segments before the
  transformer is asked - the transformer is the scarce resource on a 2-core sidecar;
* per cluster, two **logistic regressions**, one over the static embedding (the prefilter; its threshold lets
  1% of benign segments through, which passes 97-100% of training positives) and one over the transformer
  embedding side by side with hashed word and word-pair features (monitor.framing.lexical; the decision). Positives
  are the registered phrases plus variants generated from templates and synonyms
  (``data/framing/train/templates.jsonl``, monitor.framing.training_data) with case, typo and punctuation
  noise; negatives are benign
  prompt segments, the cluster's ``negatives``, generated look-alikes that share the trigger's words but not
  its meaning, and the other clusters' positives;
* per cluster, a **threshold** on the transformer score such that, on the benign reference prompts
  (cross-fitted over ``CV_FOLDS`` folds, prefilter included), the union over clusters flags at most
  ``--target-fpr`` of prompts, never below ``--min-threshold`` or the cluster's own ``min_threshold``. With
  the shipped data no cluster needs more than its floor: the cross-fitted benign FPR is 0.05%, the held-out
  half measures 0.10%. The floor (0.85) is what keeps look-alikes out. It was 0.80 until the minimal-pair
  training sentences (below) joined; with them, over eleven development sets (2026-11-27, int8 embeddings;
  ~227 paraphrases and ~133 look-alikes per cluster), raising duck_phrase and evil_persona from 0.80 to 0.85
  flagged 4 fewer look-alikes for no paraphrase lost, while ``tag_wrapper`` at 0.70 found 5 more of 228 tag
  paraphrases than at 0.75 and flagged no more look-alikes, so the registry sets ``min_threshold: 0.70`` for
  it (and 0.75 for duck_phrase, below).

The embeddings are those of the configured embedder file (default ``model.int8.onnx``, one text per run), the
file the sidecar embeds with; the registry records it as ``calibration.embedder``.

Which alternatives were measured and rejected, with their figures, is in docs/registry.md ("Calibration
history"); the module keeps the method, the docs keep the numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monitor.framing import variation
from monitor.framing.model_file import ClusterModel, FramingModel, write_model
from monitor.framing.segmenting import POSITIONS
from monitor.framing.static import STATIC_DIM, build_static_table, reusable_static  # noqa: F401 - re-exported
from monitor.framing.thresholds import choose_thresholds, write_registry
from monitor.framing.training_data import (  # noqa: F401 - calibrate's inputs, re-exported for its callers
    DATA,
    DEFAULT_BENIGN,
    DEFAULT_BENIGN_SYSTEM,
    DEFAULT_TEMPLATES,
    DEFAULT_WRITTEN,
    PROSE_PROMPTS,
    PROSE_SOURCES,
    SEED,
    VARIANTS_PER_TEMPLATE,
    Expansion,
    TrainingData,
    expand_templates,
    in_context,
    load_training_data,
    noisy,
    prose_pairs,
    read_benign,
    system_prompt_pairs,
    written_as_templates,
)

MODEL_FILE = "framing_model.npz"
# Generated variation families (monitor.framing.variation) per family; they join the templates and written
# sentences as positives and look-alikes.
VARIATION_PER_FAMILY = 160
# One look-alike counts as this many benign segments. 10, not 30, since the hand-written look-alikes joined:
# at 30 the ~3,000 look-alikes of a cluster outweighed everything and the persona model scored "You are an
# evil assistant." 0.71 (development sets: persona recall 0.83 -> 0.92 at 10, tag look-alikes 8% -> 11%).
LOOKALIKE_WEIGHT = 10.0
POSITIVE_WEIGHT = 1.0  # positives together weigh this share of the negatives
MIN_THRESHOLD = 0.85
LR_C = 4.0  # inverse L2 strength of the per-cluster models
# The static prefilter of a cluster lets through this share of benign segments (measured: hand-written
# paraphrases score far above it; the share bounds how much transformer work a benign prompt costs).
STATIC_BENIGN_PASS = 0.01
CV_FOLDS = 5  # cross-fitting folds for the threshold scores (see calibrate)
LEXICON_MIN_COUNT = 3  # see trigger_lexicon


# --- fitting -----------------------------------------------------------------------------------------

def fit_linear(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, c: float = 1.0
               ) -> tuple[np.ndarray, float]:
    """L2 logistic regression; returns (weights, bias)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=3000)
    model.fit(x, y, sample_weight=weights)
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])


def training_sets(registry: Any, generated: Expansion, written: Expansion, hosts: Sequence[str]
                  ) -> tuple[dict[str, list[str]], dict[str, list[str]], list[str], dict[str, list[str]],
                             dict[str, str]]:
    """Per cluster: positives (phrases + noisy generated variants and written sentences, some glued to a
    host sentence) and look-alikes (the registry's ``negatives``, noisy generated ones and written ones);
    generated benign system prompts; the positives without host sentences; and the host of each glued
    positive. ``generated`` and ``written`` are expanded templates (:func:`expand_templates`). Written
    look-alikes get no generated noise: they were written with natural typos."""
    positives: dict[str, list[str]] = {}
    lookalikes: dict[str, list[str]] = {}
    bare: dict[str, list[str]] = {}
    host_of: dict[str, str] = {}
    for n, cluster in enumerate(registry.clusters):
        gen, wr = generated.get(cluster.id, {}), written.get(cluster.id, {})
        pos = noisy(list(cluster.phrases) + gen.get(1, []) + wr.get(1, []), seed=SEED + n)
        bare[cluster.id] = pos
        glued = in_context(pos[::3], hosts, seed=SEED + n)
        host_of.update(glued)
        positives[cluster.id] = pos + [t for t, _ in glued]
        lookalikes[cluster.id] = list(dict.fromkeys([*cluster.negatives, *wr.get(0, []),
                                                     *noisy(gen.get(0, []), seed=SEED + n)]))
    return positives, lookalikes, generated.get("_benign_system", {}).get(0, []), bare, host_of


def trigger_lexicon(registry: Any, expansions: Sequence[Expansion]) -> dict[str, int]:
    """Words misspellings are corrected towards (monitor.framing.spelling): those of the registered phrases and
    negatives, and those used at least ``LEXICON_MIN_COUNT`` times in the (noise-free) training sentences
    -- the very sentences :func:`training_sets` trains on, before noise -- so that a typo written into a
    training sentence on purpose does not become a correction target."""
    from monitor.framing.spelling import lexicon_of

    counts = lexicon_of(t for expansion in expansions for labels in expansion.values()
                        for texts in labels.values() for t in texts)
    lexicon = {w: n for w, n in counts.items() if n >= LEXICON_MIN_COUNT}
    for cluster in registry.clusters:
        for w, n in lexicon_of([*cluster.phrases, *cluster.negatives]).items():
            lexicon[w] = lexicon.get(w, 0) + n
    return lexicon


Placed = tuple[str, str]  # (segment text, position)


def placed(texts: Sequence[str]) -> list[Placed]:
    """Training sentences at every position in turn: where a sentence sits is a feature (``position_matrix``),
    and a sentence written without a place says nothing about one."""
    return [(t, POSITIONS[i % len(POSITIONS)]) for i, t in enumerate(texts)]


def position_matrix(positions: Sequence[str]) -> np.ndarray:
    """One-hot rows over :data:`~monitor.framing.segmenting.POSITIONS` (the ``<cluster>/pb`` columns)."""
    out = np.zeros((len(positions), len(POSITIONS)), dtype=np.float32)
    index = {p: i for i, p in enumerate(POSITIONS)}
    out[np.arange(len(positions)), [index[p] for p in positions]] = 1.0
    return out


def fit_clusters(registry: Any, vectors: dict[str, np.ndarray], positives: dict[str, list[str]],
                 lookalikes: dict[str, list[str]], benign: Sequence[Placed], only: set[str] | None = None
                 ) -> dict[str, tuple[np.ndarray, float]]:
    """One logistic regression per cluster over the rows of ``vectors`` (transformer embedding and word
    features side by side) and the segment's position.

    Look-alikes are few next to thousands of benign segments, so each weighs ``LOOKALIKE_WEIGHT`` benign
    segments; positives together weigh ``POSITIVE_WEIGHT`` of all negatives (see the module docstring: with
    embedding features alone a lower share flagged fewer unseen benign prompts; with word features balanced
    classes did not). Benign segments keep the position they had in their prompt, so the per-position bias
    learns, for instance, that persona-like prose pasted into a user turn is rarely a persona.
    """
    models = {}
    for cluster in registry.clusters:
        if only is not None and cluster.id not in only:
            continue
        pos = placed(positives[cluster.id])
        pos_set = {t for t, _ in pos}
        others = placed([t for cid, ts in positives.items() if cid != cluster.id for t in ts])
        neg = [x for x in dict.fromkeys([*benign, *others]) if x[0] not in pos_set]
        neg_set = {t for t, _ in neg}
        look = placed([t for t in dict.fromkeys(lookalikes[cluster.id]) if t not in neg_set and t not in pos_set])
        rows = pos + neg + look
        x = np.hstack([np.stack([vectors[t] for t, _ in rows]), position_matrix([p for _, p in rows])])
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg) + len(look))]
        w = np.r_[np.full(len(pos), POSITIVE_WEIGHT * len(neg) / len(pos)), np.ones(len(neg)),
                  np.full(len(look), LOOKALIKE_WEIGHT)]
        models[cluster.id] = fit_linear(x, y, w, c=LR_C)
    return models


def fit_static(positives: np.ndarray, benign: np.ndarray, lookalikes: np.ndarray
               ) -> tuple[np.ndarray, float, float]:
    """The prefilter of one cluster from static embeddings (rows): (weights, bias, threshold); the
    threshold lets ``STATIC_BENIGN_PASS`` of the ``benign`` segments through."""
    from monitor.framing.detector import sigmoid

    n_pos, n_neg = len(positives), len(benign) + len(lookalikes)
    xs = np.concatenate([positives, benign, lookalikes])
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    sw, sb = fit_linear(xs, y, np.r_[np.full(n_pos, n_neg / n_pos), np.ones(n_neg)], c=1.0)
    return sw, sb, float(np.quantile(sigmoid(benign @ sw + sb), 1 - STATIC_BENIGN_PASS))


def prompt_scores(registry: Any, models: dict[str, tuple[np.ndarray, float]], vectors: dict[str, np.ndarray],
                  segmented: Sequence[Sequence[Any]], passes: dict[str, np.ndarray] | None = None
                  ) -> np.ndarray:
    """(n_prompts, n_clusters): best segment score per cluster, positions respected
    (:func:`~monitor.framing.detector.best_per_cluster`, the detector's own rule). With ``passes`` (text ->
    per-cluster bool), a segment the prefilter stops scores 0 for that cluster, as in the detector."""
    from monitor.framing.detector import best_per_cluster, sigmoid

    ids = registry.cluster_ids()
    w = np.stack([models[c][0] for c in ids], axis=1)
    b = np.array([models[c][1] for c in ids], dtype=np.float32)
    allowed = {pos: np.array([c.allows(pos) for c in registry.clusters]) for pos in POSITIONS}
    out = np.zeros((len(segmented), len(ids)), dtype=np.float32)
    for i, segs in enumerate(segmented):
        if segs:
            x = np.hstack([np.stack([vectors[s.text] for s in segs]), position_matrix([s.position for s in segs])])
            scores = sigmoid(x @ w + b)
            if passes is not None:
                scores = np.where(np.stack([passes[s.text] for s in segs]), scores, 0.0)
            out[i] = best_per_cluster(scores, [s.position for s in segs], allowed)
    return out


def calibrate(registry: Any, embedder: Any, data: TrainingData, *, target_fpr: float, out_path: Path,
              min_threshold: float = MIN_THRESHOLD, static: dict[str, np.ndarray] | None = None,
              validate: bool = False) -> dict[str, Any]:
    """Fit everything, pick thresholds, write ``out_path`` (+ its .npz); return a report.

    Thresholds come from *cross-fitted* scores: the benign prompts are split in ``CV_FOLDS`` folds, models
    trained with the other folds' segments as negatives (and without positives glued to this fold's
    prompts) score each fold. Scoring prompts whose segments were
    training negatives would put thresholds far too low (measured: 0.3% FPR in-sample, 1.1% on unseen
    benign prompts).
    """
    from monitor.framing.detector import StaticEncoder, sigmoid
    from monitor.framing.lexical import LexicalFeatures
    from monitor.framing.segmenting import segment_prompt
    from monitor.framing.spelling import Speller
    from monitor.sidecar.events import Prompt

    benign, templates = data.benign, data.templates

    prompts = [Prompt(system=s or None, user=(u,)) for s, u in benign]
    segmented = [segment_prompt(p) for p in prompts]
    hosts = [u for _, u in benign if len(u) < 200] or ["Tell me about your day."]
    generated = expand_templates([t for t in templates if "texts" not in t])
    written = expand_templates([t for t in templates if "texts" in t])
    for v in variation.generate(VARIATION_PER_FAMILY):
        written.setdefault(v.cluster, {}).setdefault(v.label, []).append(v.text)
    positives, lookalikes, benign_systems, bare, host_of = training_sets(registry, generated, written, hosts)
    lexicon = trigger_lexicon(registry, [generated, written])
    static = static or build_static_table(embedder)
    # The detector corrects misspelt trigger words before embedding (monitor.framing.spelling); so does training.
    speller = Speller(lexicon, known=static["vocab"].tolist())
    all_texts = list(dict.fromkeys(itertools.chain(
        (s.text for segs in segmented for s in segs), benign_systems, *positives.values(), *lookalikes.values())))
    corrected = [speller.correct(t) for t in all_texts]
    # The per-cluster models see the embedding and the word features side by side (monitor.framing.lexical).
    lexical = LexicalFeatures()
    features = np.hstack([embedder.embed(corrected), lexical.encode(corrected)])
    vectors = dict(zip(all_texts, features, strict=True))
    del features

    def negatives_of(indices: Iterable[int]) -> list[Placed]:
        return list(dict.fromkeys(itertools.chain(((s.text, s.position) for i in indices for s in segmented[i]),
                                                  ((t, "system") for t in benign_systems))))

    def texts_of(rows: Sequence[Placed]) -> list[str]:
        return list(dict.fromkeys(t for t, _ in rows))

    encoder = StaticEncoder(static)
    static_texts = list(dict.fromkeys(itertools.chain(
        (s.text for segs in segmented for s in segs), benign_systems, *bare.values(), *lookalikes.values())))
    static_vectors = dict(zip(static_texts, encoder.encode(static_texts), strict=True))

    def static_of(texts: Sequence[str]) -> np.ndarray:
        return np.stack([static_vectors[t] for t in texts]) if texts else np.zeros((0, encoder.dim), np.float32)

    bare_static = {cid: static_of(ts) for cid, ts in bare.items()}
    lookalike_static = {cid: static_of(ts) for cid, ts in lookalikes.items()}
    ids = registry.cluster_ids()
    folds = np.arange(len(prompts)) % CV_FOLDS
    oof = np.zeros((len(prompts), len(ids)), dtype=np.float32)
    for f in range(CV_FOLDS):
        train_idx = np.flatnonzero(folds != f)
        test_idx = np.flatnonzero(folds == f)
        # A benign prompt glued to a trigger is a training positive; left in, it would inflate that very
        # prompt's held-out score (measured: thresholds 0.89 -> 0.96 on tag_wrapper) -- keep it out.
        held_out = {benign[i][1] for i in test_idx}
        fold_positives = {cid: [t for t in ts if host_of.get(t) not in held_out] for cid, ts in positives.items()}
        fold_benign = negatives_of(train_idx)
        fold_models = fit_clusters(registry, vectors, fold_positives, lookalikes, fold_benign)
        # The prefilter is part of the detector: a segment it stops is never scored. Cross-fitted too, so a
        # held-out prompt's segments were not its negatives (measured: thresholds from scores without it
        # left the held-out benign FPR at 0.05% for a 0.5% target).
        test_texts = list(dict.fromkeys(s.text for i in test_idx for s in segmented[i]))
        static_test = static_of(test_texts)
        fold_benign_static = static_of(texts_of(fold_benign))
        passing = np.zeros((len(test_texts), len(ids)), dtype=bool)
        for j, cid in enumerate(ids):
            sw, sb, st = fit_static(bare_static[cid], fold_benign_static, lookalike_static[cid])
            passing[:, j] = sigmoid(static_test @ sw + sb) >= st
        passes = dict(zip(test_texts, passing, strict=True))
        for i in test_idx:  # as in the detector: the whole system prompt is always embedded
            whole = next((s.text for s in segmented[i] if s.position == "system"), None)
            if whole is not None:
                passes[whole] = np.ones(len(ids), dtype=bool)
        oof[test_idx] = prompt_scores(registry, fold_models, vectors, [segmented[i] for i in test_idx], passes)
    all_benign = negatives_of(range(len(prompts)))
    all_benign_static = static_of(texts_of(all_benign))
    models = fit_clusters(registry, vectors, positives, lookalikes, all_benign)
    floors = [min_threshold if c.min_threshold is None else c.min_threshold for c in registry.clusters]
    thresholds, union_fpr, per_cluster = choose_thresholds(ids, oof, target_fpr, floors)

    if validate:
        report_families = held_out_families(registry, generated, written, hosts, vectors, all_benign, lookalikes,
                                            thresholds, embedder, lexical, speller)
    cluster_models: dict[str, ClusterModel] = {}
    report: dict[str, Any] = {"clusters": {}, "benign_prompts": len(prompts), "target_fpr": target_fpr,
                              "union_fpr": union_fpr, "embedder": embedder.model_file}
    for cluster in registry.clusters:
        pos = bare[cluster.id]  # the prefilter only has to pass the trigger's own sentence or line
        sw, sb, st = fit_static(bare_static[cluster.id], all_benign_static, lookalike_static[cluster.id])
        pos_static = sigmoid(bare_static[cluster.id] @ sw + sb)
        benign_static = sigmoid(all_benign_static @ sw + sb)
        passed = float((benign_static >= st).mean())
        pos_passed = float((pos_static >= st).mean())
        w, b = models[cluster.id]
        lexical_end = embedder.dim + lexical.dim
        cluster_models[cluster.id] = ClusterModel(w[:embedder.dim], b, sw, sb, st, w[embedder.dim:lexical_end],
                                                  w[lexical_end:])
        negatives = len(all_benign) + len(lookalikes[cluster.id]) + len(positives) - 1
        report["clusters"][cluster.id] = {"positives": len(pos), "negatives": negatives,
                                          "lookalikes": len(lookalikes[cluster.id]),
                                          "threshold": thresholds[cluster.id],
                                          "benign_fpr": per_cluster[cluster.id],
                                          "static_threshold": round(st, 4), "static_pass_rate": round(passed, 4),
                                          "static_positive_recall": round(pos_passed, 4)}

    if validate:
        report["held_out_families"] = report_families
    model_name = MODEL_FILE if out_path.name == "triggers.yaml" else out_path.stem + "_model.npz"
    model_path = out_path.parent / model_name
    write_model(model_path, FramingModel(cluster_models, static, lexicon, lexical))
    write_registry(out_path, registry.raw, thresholds, model_name, target_fpr, report)
    report["registry"] = str(out_path)
    report["model"] = str(model_path)
    return report


# Where a held-out family's fresh sentences are scored: the position its cluster's framing occupies in traffic.
NATURAL_POSITION = {"evil_persona": "system"}


def held_out_families(registry: Any, generated: Expansion, written: Expansion, hosts: Sequence[str],
                      vectors: dict[str, np.ndarray], benign: Sequence[Placed], lookalikes: dict[str, list[str]],
                      thresholds: dict[str, float], embedder: Any, lexical: Any, speller: Any) -> dict[str, float]:
    """Recall of each generated positive family when the cluster is trained without it: fresh sentences of
    the family (another seed), scored at the cluster's natural position against the calibrated threshold.
    A family the model only knows because it saw it scores low here; this is what tells whether the detector
    generalises to a way of saying it that nobody wrote down (monitor.framing.variation)."""
    from monitor.framing.detector import sigmoid

    out: dict[str, float] = {}
    fresh = list(variation.generate(VARIATION_PER_FAMILY, seed=variation.SEED + 1))
    for cluster, label, family in variation.FAMILIES:
        if label != 1:
            continue
        removed = {v.text for v in variation.generate(VARIATION_PER_FAMILY) if v.family == family
                   and v.cluster == cluster}
        reduced = {c: {lab: [x for x in ts if not (c == cluster and lab == 1 and x in removed)]
                       for lab, ts in labels.items()} for c, labels in written.items()}
        positives, _, _, _, _ = training_sets(registry, generated, reduced, hosts)
        missing = [x for x in itertools.chain(*positives.values()) if x not in vectors]
        if missing:
            corrected = [speller.correct(x) for x in missing]
            vectors.update(zip(missing, np.hstack([embedder.embed(corrected), lexical.encode(corrected)]),
                               strict=True))
        (w, b), = fit_clusters(registry, vectors, positives, lookalikes, benign, only={cluster}).values()
        tests = [v.text for v in fresh if v.cluster == cluster and v.family == family and v.text not in removed]
        corrected = [speller.correct(x) for x in tests]
        x = np.hstack([embedder.embed(corrected), lexical.encode(corrected),
                       position_matrix([NATURAL_POSITION.get(cluster, "user_suffix")] * len(tests))])
        out[f"{cluster}/{family}"] = round(float((sigmoid(x @ w + b) >= thresholds[cluster]).mean()), 3)
    return out
