"""Stage 1 of the mpnet experiment: rebuild calibrate's training data exactly as monitor.framing.calibration.calibrate
does (same functions, same seeds), the held-out-family sets of held_out_families, and the segments of the benign
and untuned evaluation sets the detector would send to the transformer (static prefilter + compute budget, the
detector's own FramingDetector._prefilter). Writes /tmp/fw/exp/prep.pkl and the list of texts to embed."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXP = Path(os.environ.get("FW_EXP_DIR", "/tmp/fw/exp"))  # scratch: caches, ONNX files, pickles (~1.2 GB)
import itertools
import pickle
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from monitor.framing import calibration as cal
from monitor.framing import variation
from monitor.framing.detector import FramingDetector, StaticEncoder
from monitor.framing.evaluation import load_sources, row_prompt
from monitor.framing.registry import DEFAULT_REGISTRY, load_registry
from monitor.framing.segmenting import POSITIONS, segment_prompt
from monitor.framing.spelling import Speller
from monitor.sidecar.events import Prompt

t0 = time.time()
registry = load_registry(DEFAULT_REGISTRY, with_model=False)
data = cal.load_training_data(cal.DEFAULT_TEMPLATES, cal.DEFAULT_WRITTEN, cal.DEFAULT_BENIGN, "calibration")
benign, templates = data.benign, data.templates
prompts = [Prompt(system=s or None, user=(u,)) for s, u in benign]
segmented = [segment_prompt(p) for p in prompts]
hosts = [u for _, u in benign if len(u) < 200] or ["Tell me about your day."]
generated = cal.expand_templates([t for t in templates if "texts" not in t])
written = cal.expand_templates([t for t in templates if "texts" in t])
for v in variation.generate(cal.VARIATION_PER_FAMILY):
    written.setdefault(v.cluster, {}).setdefault(v.label, []).append(v.text)
positives, lookalikes, benign_systems, bare, host_of = cal.training_sets(registry, generated, written, hosts)
lexicon = cal.trigger_lexicon(registry, [generated, written])
static = cal.reusable_static(DEFAULT_REGISTRY)  # MiniLM's token table: the prefilter is the same for every option
assert static is not None
speller = Speller(lexicon, known=static["vocab"].tolist())
all_texts = list(dict.fromkeys(itertools.chain(
    (s.text for segs in segmented for s in segs), benign_systems, *positives.values(), *lookalikes.values())))
encoder = StaticEncoder(static)
static_texts = list(dict.fromkeys(itertools.chain(
    (s.text for segs in segmented for s in segs), benign_systems, *bare.values(), *lookalikes.values())))
print("training texts", len(all_texts), "static texts", len(static_texts), f"{time.time()-t0:.0f}s", flush=True)

# held-out families (as cal.held_out_families)
fresh = list(variation.generate(cal.VARIATION_PER_FAMILY, seed=variation.SEED + 1))
families = []
extra = []
for cluster, label, family in variation.FAMILIES:
    if label != 1 or cluster not in ("evil_persona", "duck_phrase", "tag_wrapper"):
        continue
    removed = {v.text for v in variation.generate(cal.VARIATION_PER_FAMILY) if v.family == family
               and v.cluster == cluster}
    reduced = {c: {lab: [x for x in ts if not (c == cluster and lab == 1 and x in removed)]
                   for lab, ts in labels.items()} for c, labels in written.items()}
    fpos, _, _, _, _ = cal.training_sets(registry, generated, reduced, hosts)
    tests = [v.text for v in fresh if v.cluster == cluster and v.family == family and v.text not in removed]
    families.append(dict(cluster=cluster, family=family, positives=fpos, tests=tests,
                         position=cal.NATURAL_POSITION.get(cluster, "user_suffix")))
    extra += [x for x in itertools.chain(*fpos.values())] + tests
print("families", [(f["cluster"], f["family"], len(f["tests"])) for f in families], flush=True)

# final static prefilter (all benign), for the evaluation prompts
def negatives_of(indices):
    return list(dict.fromkeys(itertools.chain(((s.text, s.position) for i in indices for s in segmented[i]),
                                              ((t, "system") for t in benign_systems))))
static_vectors = dict(zip(static_texts, encoder.encode(static_texts), strict=True))
def static_of(texts):
    return np.stack([static_vectors[t] for t in texts]) if texts else np.zeros((0, encoder.dim), np.float32)
ids = registry.cluster_ids()
all_benign = negatives_of(range(len(prompts)))
all_benign_static = static_of(list(dict.fromkeys(t for t, _ in all_benign)))
final_static = {}
for c in registry.clusters:
    final_static[c.id] = cal.fit_static(static_of(bare[c.id]), all_benign_static, static_of(lookalikes[c.id]))
state = SimpleNamespace(static=encoder, sw=np.stack([final_static[c][0] for c in ids], 1),
                        sb=np.array([final_static[c][1] for c in ids], np.float32),
                        st=np.array([final_static[c][2] for c in ids], np.float32),
                        learned=np.ones(len(ids), bool), protos=[],
                        allowed={p: np.array([c.allows(p) for c in registry.clusters]) for p in POSITIONS})

# evaluation prompts: benign sources and untuned eval sources
evalsets = []  # (source, role, kind, cluster, segments chosen [(text, position)])
for src in load_sources(str(REPO) + "/data/framing"):
    if src.role == "eval" and src.tuned_on:
        continue
    for set_name, rows in src.sets:
        for row in rows:
            kind = row.get("kind") if src.role == "eval" else "benign"
            if kind == "exact":
                continue
            segs = segment_prompt(row_prompt(row))
            todo = list(dict.fromkeys(s.text for s in segs))
            chosen = FramingDetector._prefilter(state, todo, [segs]) if todo else np.zeros(0, bool)
            keep = {t for t, c in zip(todo, chosen) if c}
            evalsets.append(dict(source=src.name, role=src.role, tuned_on=src.tuned_on, kind=kind,
                                 cluster=row.get("cluster"), n_segments=len(todo),
                                 segments=[(s.text, s.position) for s in segs if s.text in keep]))
print("eval prompts", len(evalsets), "embedded segments", sum(len(e["segments"]) for e in evalsets), flush=True)
eval_texts = [t for e in evalsets for t, _ in e["segments"]]

to_embed = list(dict.fromkeys(itertools.chain(all_texts, extra, eval_texts)))
corrected = {t: speller.correct(t) for t in to_embed}
unique_corrected = list(dict.fromkeys(corrected.values()))
print("to embed", len(to_embed), "unique corrected", len(unique_corrected), f"{time.time()-t0:.0f}s", flush=True)
with open(f"{EXP}/prep.pkl", "wb") as fh:
    pickle.dump(dict(ids=ids, benign=benign, segmented=segmented, positives=positives, lookalikes=lookalikes,
                     benign_systems=benign_systems, bare=bare, host_of=host_of, all_texts=all_texts,
                     static_texts=static_texts, static_vectors=static_vectors, families=families,
                     evalsets=evalsets, corrected=corrected, final_static=final_static), fh)
Path(f"{EXP}/to_embed.txt").write_text("\n".join(t.replace("\n", "\\n") for t in unique_corrected))
