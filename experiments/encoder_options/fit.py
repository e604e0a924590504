"""Stage 3 (one model per run): the calibrate pipeline of monitor.framing.calibration with this model's embeddings -
cross-fitted per-segment scores of the benign calibration prompts, thresholds (choose_thresholds, target FPR 0.005 as
`framewatch calibrate` defaults, registry floors), the final heads' scores on the evaluation prompts' segments, and
held-out-family scores (as held_out_families). Usage: fit.py minilm|mpnet -> /tmp/fw/exp/fit_<model>.pkl"""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXP = Path(os.environ.get("FW_EXP_DIR", "/tmp/fw/exp"))  # scratch: caches, ONNX files, pickles (~1.2 GB)
import itertools
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from monitor.framing import calibration as cal
from monitor.framing.detector import sigmoid
from monitor.framing.lexical import LexicalFeatures
from monitor.framing.registry import DEFAULT_REGISTRY, load_registry

name = sys.argv[1]
# Optional head variant (an extra probe, not calibrate's heads): "c0.05_nolex" = LR_C 0.05, no word features.
variant = sys.argv[2] if len(sys.argv) > 2 else ""
if variant:
    cal.LR_C = float(variant.split("_")[0][1:])
t0 = time.time()
def log(*a):
    print(f"[{time.time() - t0:6.0f}s]", *a, flush=True)

P = pickle.load(open(f"{EXP}/prep.pkl", "rb"))
registry = load_registry(DEFAULT_REGISTRY, with_model=False)
ids = registry.cluster_ids()
unique = list(dict.fromkeys(P["corrected"].values()))
emb = np.concatenate([np.load(p) for p in sorted(Path(f"{EXP}/cache_{name}").glob("*.npy"))])
assert len(emb) == len(unique), (len(emb), len(unique))
row = {t: i for i, t in enumerate(unique)}
lexical = LexicalFeatures()
originals = list(P["corrected"])
corr = [P["corrected"][t] for t in originals]
feats = emb[[row[c] for c in corr]]
if "nolex" not in variant:
    feats = np.hstack([feats, lexical.encode(corr)])
vectors = dict(zip(originals, feats, strict=True))
del feats, emb
log("vectors", len(vectors), next(iter(vectors.values())).shape)

benign, segmented, positives, lookalikes = P["benign"], P["segmented"], P["positives"], P["lookalikes"]
benign_systems, bare, host_of, static_vectors = P["benign_systems"], P["bare"], P["host_of"], P["static_vectors"]
def negatives_of(indices):
    return list(dict.fromkeys(itertools.chain(((s.text, s.position) for i in indices for s in segmented[i]),
                                              ((t, "system") for t in benign_systems))))
def static_of(texts):
    return np.stack([static_vectors[t] for t in texts]) if texts else np.zeros((0, 128), np.float32)
def seg_probs(models, segs, passes=None):
    w = np.stack([models[c][0] for c in ids], axis=1); b = np.array([models[c][1] for c in ids], np.float32)
    x = np.hstack([np.stack([vectors[t] for t, _ in segs]), cal.position_matrix([p for _, p in segs])])
    s = sigmoid(x @ w + b)
    if passes is not None:
        s = np.where(np.stack([passes[t] for t, _ in segs]), s, 0.0)
    return s.astype(np.float32)

bare_static = {c: static_of(ts) for c, ts in bare.items()}
lookalike_static = {c: static_of(ts) for c, ts in lookalikes.items()}
n = len(benign)
folds = np.arange(n) % cal.CV_FOLDS
oof = np.zeros((n, len(ids)), np.float32)
oof_segs = [None] * n  # per prompt: (n_segments, k) cross-fitted probabilities, 0 where the prefilter stops
for f in range(cal.CV_FOLDS):
    train_idx, test_idx = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
    held_out = {benign[i][1] for i in test_idx}
    fold_positives = {c: [t for t in ts if host_of.get(t) not in held_out] for c, ts in positives.items()}
    fold_benign = negatives_of(train_idx)
    fold_models = cal.fit_clusters(registry, vectors, fold_positives, lookalikes, fold_benign)
    test_texts = list(dict.fromkeys(s.text for i in test_idx for s in segmented[i]))
    static_test = static_of(test_texts)
    fold_benign_static = static_of(list(dict.fromkeys(t for t, _ in fold_benign)))
    passing = np.zeros((len(test_texts), len(ids)), bool)
    for j, c in enumerate(ids):
        sw, sb, st = cal.fit_static(bare_static[c], fold_benign_static, lookalike_static[c])
        passing[:, j] = sigmoid(static_test @ sw + sb) >= st
    passes = dict(zip(test_texts, passing, strict=True))
    for i in test_idx:
        whole = next((s.text for s in segmented[i] if s.position == "system"), None)
        if whole is not None:
            passes[whole] = np.ones(len(ids), bool)
    oof[test_idx] = cal.prompt_scores(registry, fold_models, vectors, [segmented[i] for i in test_idx], passes)
    for i in test_idx:
        if segmented[i]:
            oof_segs[i] = (seg_probs(fold_models, [(s.text, s.position) for s in segmented[i]], passes),
                           [s.position for s in segmented[i]])
    log("fold", f, "done")
models = cal.fit_clusters(registry, vectors, positives, lookalikes, negatives_of(range(n)))
floors = [cal.MIN_THRESHOLD if c.min_threshold is None else c.min_threshold for c in registry.clusters]
thresholds, union_fpr, per_cluster = cal.choose_thresholds(ids, oof, 0.005, floors)
log("thresholds", thresholds, "union oof fpr", union_fpr)

evals = []
for e in P["evalsets"]:
    evals.append(seg_probs(models, e["segments"]) if e["segments"] else np.zeros((0, len(ids)), np.float32))
log("eval prompts scored")

fam = {}
for F in P["families"]:
    (w, b), = cal.fit_clusters(registry, vectors, F["positives"], lookalikes, negatives_of(range(n)),
                               only={F["cluster"]}).values()
    x = np.hstack([np.stack([vectors[t] for t in F["tests"]]),
                   cal.position_matrix([F["position"]] * len(F["tests"]))])
    p = sigmoid(x @ w + b)
    fam[(F["cluster"], F["family"])] = p.astype(np.float32)
    log("family", F["cluster"], F["family"], "recall", round(float((p >= thresholds[F["cluster"]]).mean()), 3))
pickle.dump(dict(oof=oof, oof_segs=oof_segs, thresholds=thresholds, union_fpr=union_fpr, per_cluster=per_cluster,
                 floors=floors, evals=evals, families=fam, models=models),
            open(f"{EXP}/fit_{name}{'_' + variant if variant else ''}.pkl", "wb"))
log("written")
