"""Stage 4: tables for (a) MiniLM heads, (b) mpnet heads, (c) two-stage (MiniLM head prob >= bar escalates a segment
to the mpnet heads, which decide; thresholds re-chosen on the cross-fitted two-stage scores, same target and floors),
(d) SetFit-style fine-tuned MiniLM heads (setfit.py: held-out-family rows from the group encoder that never saw the
family, with that encoder's own thresholds; everything else from the encoder tuned on all training data).
(b)/(c) need fit_mpnet.pkl, (d) fit_setfit_{all,g0,g1,g2}.pkl; each is left out when its pickles are missing.
Writes $FW_EXP_DIR/mpnet_results.md."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXP = Path(os.environ.get("FW_EXP_DIR", "/tmp/fw/exp"))  # scratch: caches, ONNX files, pickles (~1.2 GB)
import json
import pickle
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from monitor.framing import calibration as cal
from monitor.framing.registry import DEFAULT_REGISTRY, load_registry
from monitor.framing.segmenting import POSITIONS

P = pickle.load(open(f"{EXP}/prep.pkl", "rb"))
VARIANT = sys.argv[1] if len(sys.argv) > 1 else ""  # e.g. c0.05_nolex (fit.py's optional head variant)
SUFFIX = "_" + VARIANT if VARIANT else ""
A = pickle.load(open(f"{EXP}/fit_minilm{SUFFIX}.pkl", "rb"))
HAVE_B = Path(f"{EXP}/fit_mpnet{SUFFIX}.pkl").exists()
B = pickle.load(open(f"{EXP}/fit_mpnet{SUFFIX}.pkl", "rb")) if HAVE_B else None
HAVE_D = all(Path(f"{EXP}/fit_setfit_{g}{SUFFIX}.pkl").exists() for g in ("all", "g0", "g1", "g2"))
D = {g: pickle.load(open(f"{EXP}/fit_setfit_{g}{SUFFIX}.pkl", "rb")) for g in ("all", "g0", "g1", "g2")} if HAVE_D else {}
D_INFO = {g: json.load(open(f"{EXP}/setfit_{g}/info.json")) for g in D}
# (d2): setfit.py --variant d2; the evaluation-set columns need encoder all only, held-out rows its group encoders
HAVE_D2 = Path(f"{EXP}/fit_setfit_d2_all{SUFFIX}.pkl").exists()
D2 = {g: pickle.load(open(f"{EXP}/fit_setfit_d2_{g}{SUFFIX}.pkl", "rb")) for g in ("all", "g0", "g1", "g2")
      if Path(f"{EXP}/fit_setfit_d2_{g}{SUFFIX}.pkl").exists()} if HAVE_D2 else {}
D2_INFO = {g: json.load(open(f"{EXP}/setfit_d2_{g}/info.json")) for g in D2}
# setfit.py's groups: prep.py's held-out families round-robin; check against what each encoder was trained without
D_GROUP = {(F["cluster"], F["family"]): f"g{i % 3}" for i, F in enumerate(P["families"])}
for key, g in D_GROUP.items():
    assert not D or f"{key[0]}/{key[1]}" in D_INFO[g]["held_out"], (key, g)
    assert g not in D2 or f"{key[0]}/{key[1]}" in D2_INFO[g]["held_out"], (key, g)
registry = load_registry(DEFAULT_REGISTRY, with_model=False)
ids = registry.cluster_ids()
K = len(ids)
allowed = {p: np.array([c.allows(p) for c in registry.clusters]) for p in POSITIONS}
BARS = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5]
MAIN = ["evil_persona", "duck_phrase", "tag_wrapper"]

def amask(positions):
    return np.stack([allowed[p] for p in positions]) if len(positions) else np.zeros((0, K), bool)

def escalated(pmini, positions, bar):
    """A segment goes to mpnet when any cluster it may belong to (position allowed) scores >= bar on MiniLM."""
    return (np.where(amask(positions), pmini, 0.0) >= bar).any(axis=1)

# cross-fitted two-stage prompt scores -> thresholds
def oof_two_stage(bar):
    out = np.zeros_like(A["oof"]); esc = []; tot = []
    for i, (sa, sb) in enumerate(zip(A["oof_segs"], B["oof_segs"])):
        if sa is None:
            continue
        (pa, pos), (pb, _) = sa, sb
        e = escalated(pa, pos, bar)
        embedded = (pa > 0).any(axis=1)  # passed the prefilter for some cluster
        esc.append(int(e.sum())); tot.append(int(embedded.sum()))
        s = np.where(e[:, None], pb, 0.0)
        out[i] = np.where(amask(pos), s, 0.0).max(axis=0)
    return out, np.array(esc), np.array(tot)

configs = {"a_minilm": dict(kind="single", fit=A, thr=A["thresholds"], fam_fit={k: A for k in D_GROUP},
                       union_fpr=A["union_fpr"])}
if HAVE_B:
    configs["b_mpnet"] = dict(kind="single", fit=B, thr=B["thresholds"], fam_fit={k: B for k in D_GROUP},
                              union_fpr=B["union_fpr"])
if HAVE_D:
    configs["d_setfit"] = dict(kind="single", fit=D["all"], thr=D["all"]["thresholds"],
                               fam_fit={k: D[g] for k, g in D_GROUP.items()}, union_fpr=D["all"]["union_fpr"])
if HAVE_D2:  # held-out rows only from a group encoder that never saw the family (None: not trained, shown "-")
    configs["d2_setfit"] = dict(kind="single", fit=D2["all"], thr=D2["all"]["thresholds"],
                                fam_fit={k: D2.get(g) for k, g in D_GROUP.items()}, union_fpr=D2["all"]["union_fpr"])
for bar in BARS if HAVE_B else []:
    oof2, esc, tot = oof_two_stage(bar)
    thr, ufpr, _ = cal.choose_thresholds(ids, oof2, 0.005, A["floors"])
    configs[f"c_bar{bar}"] = dict(kind="two", bar=bar, thr=thr, union_fpr=ufpr,
                                  cal_esc_per_prompt=float(esc.mean()), cal_esc_share=float(esc.sum() / max(tot.sum(), 1)))

def decide(probs, positions, thr):
    if len(probs) == 0:
        return None
    rows = np.where(amask(positions), probs, 0.0)
    t = np.array([thr[c] for c in ids])
    d = np.where(rows >= t, rows, 0.0)
    if d.max() <= 0:
        return None
    return ids[int(np.unravel_index(int(d.argmax()), d.shape)[1])]

results = {}
for name, cfg in configs.items():
    fam = {}
    for F in P["families"]:
        key = (F["cluster"], F["family"]); c = F["cluster"]
        if cfg["kind"] == "single":  # the family's own encoder (d: its group's) and that encoder's threshold
            ff = cfg["fam_fit"][key]
            fam[key] = float((ff["families"][key] >= ff["thresholds"][c]).mean()) if ff is not None else float("nan")
        else:
            pa, pb = A["families"][key], B["families"][key]
            fam[key] = float(((pa >= cfg["bar"]) & (pb >= cfg["thr"][c])).mean())
            cfg.setdefault("fam_below_bar", {})[key] = float((pa < cfg["bar"]).mean())
    ev = defaultdict(lambda: [0, 0]); esc = defaultdict(lambda: [0, 0, 0])  # source -> escalated, embedded, prompts
    for i, (e, pa) in enumerate(zip(P["evalsets"], A["evals"], strict=True)):
        pos = [p for _, p in e["segments"]]
        pb = B["evals"][i] if HAVE_B else None
        if cfg["kind"] == "single":
            got = decide(cfg["fit"]["evals"][i], pos, cfg["thr"])
        else:
            m = escalated(pa, pos, cfg["bar"]) if len(pos) else np.zeros(0, bool)
            got = decide(np.where(m[:, None], pb, 0.0), pos, cfg["thr"]) if len(pos) else None
            if e["kind"] == "benign":
                esc[e["source"]][0] += int(m.sum()); esc[e["source"]][1] += len(pos); esc[e["source"]][2] += 1
        if e["kind"] == "paraphrase":
            k = (e["source"], e["cluster"]); ev[k][0] += got == e["cluster"]; ev[k][1] += 1
        else:
            k = (e["source"], e["kind"]); ev[k][0] += got is not None; ev[k][1] += 1
    results[name] = dict(fam=fam, ev=dict(ev), esc=dict(esc), thr=cfg["thr"], cfg=cfg)

fams = [(F["cluster"], F["family"]) for F in P["families"]]
def cell(x):  # "-" for a held-out row whose group encoder was not trained (NaN propagates to min/mean)
    return "-" if np.isnan(x) else f"{x:.2f}"
names = list(configs)
L = []
L.append("# Encoder options for the framing heads (issue 16 item 4) - held-out-family validation"
         + (f" - head variant {VARIANT}" if VARIANT else "") + "\n")
L.append("All heads: embedding + hashed word features + per-position bias, fitted by monitor.framing.calibration "
         "(fit_clusters, same training data/seeds); thresholds by choose_thresholds on cross-fitted benign "
         "calibration prompts (target FPR 0.5%, registry floors). All encoders int8, one text per run. "
         "(c) = MiniLM head prob >= bar escalates the segment to mpnet, whose heads decide (thresholds re-chosen on "
         "the cross-fitted two-stage scores). (d) = MiniLM after a SetFit-style contrastive fine-tune (setfit.py); "
         "its held-out rows come from the group encoder trained without the family, at that encoder's own "
         "thresholds. Heads only: no exact match, no PHRASE_PROXIMITY.\n")
hdr = "| | " + " | ".join(n.replace("c_bar", "c bar ") for n in names) + " |"
sep = "|---" * (len(names) + 1) + "|"
L.append("## Held-out family recall (fresh sentences of a family, its cluster trained without it)\n")
L += [hdr, sep]
for k in fams:
    L.append(f"| {k[0]}/{k[1]} | " + " | ".join(cell(results[n]['fam'][k]) for n in names) + " |")
L.append("| **min** | " + " | ".join(f"**{cell(np.min(list(results[n]['fam'].values())))}**" for n in names) + " |")
L.append("| mean | " + " | ".join(cell(np.mean(list(results[n]['fam'].values()))) for n in names) + " |")
if HAVE_B:
    L.append("\nHeld-out positives below the escalation bar (MiniLM head, family held out) - recall lost to "
             "escalation:\n")
    L.append("| family | " + " | ".join(f"bar {b}" for b in BARS) + " |"); L.append("|---" * (len(BARS) + 1) + "|")
    for k in fams:
        L.append(f"| {k[0]}/{k[1]} | "
                 + " | ".join(f"{configs[f'c_bar{b}']['fam_below_bar'][k]:.2f}" for b in BARS) + " |")
L.append("\n## Thresholds\n"); L += [hdr, sep]
for c in ids:
    L.append(f"| {c} | " + " | ".join(f"{results[n]['thr'][c]:.3f}" for n in names) + " |")
L.append("| cross-fitted benign FPR (union) | " + " | ".join(f"{configs[n]['union_fpr']:.4f}" for n in names) + " |")
L.append("\n## Evaluation sets (untuned hand-written eval sources + all benign sources), prompt level\n")
L.append("Segments embedded = the detector's static prefilter + compute budget (FramingDetector._prefilter, final "
         "static heads). Recall counts the right cluster; look-alikes/benign count any flag.\n")
L += [hdr, sep]
keys = sorted(results["a_minilm"]["ev"], key=lambda k: (k[1] == "benign", k[1] == "lookalike", k))
for k in keys:
    if k[1] not in MAIN + ["lookalike", "benign"]:
        continue
    tot = results["a_minilm"]["ev"][k][1]
    label = f"{k[0]} {k[1]}" + (" recall" if k[1] in MAIN else " flagged") + f" (n={tot})"
    L.append(f"| {label} | " + " | ".join(f"{results[n]['ev'][k][0] / tot:.3f}" for n in names) + " |")
if HAVE_D:
    L.append("\n## (d) per encoder: training, the group encoders' own thresholds, export parity\n")
    L.append("Parity: data/parity_texts.jsonl, sentence-transformers fp32 (max_seq_length 256) of the same weights vs "
             "the ONNX file through monitor.embedding.Embedder (int8: one text per run).\n")
    L.append("| encoder | held out | pairs | train s (threads) | final loss | " + " | ".join(ids)
             + " | cross-fitted FPR | int8 mean cos | int8 min cos | fp32 onnx mean cos | cos to base |")
    L.append("|---" * (len(ids) + 10) + "|")
    for g, fit, inf in [(g, f, D_INFO[g]) for g, f in D.items()] + [(f"d2 {g}", f, D2_INFO[g]) for g, f in D2.items()]:
        par = inf["parity"]
        L.append(f"| {g} | {', '.join(inf['held_out']) or '-'} | {inf['pairs']} | {inf['train_seconds']:.0f} "
                 f"({inf['threads']}) | {inf['final_loss']:.4f} | "
                 + " | ".join(f"{fit['thresholds'][c]:.3f}" for c in ids)
                 + f" | {fit['union_fpr']:.4f} | {par['model.int8.onnx']['mean_cosine']:.4f} | "
                 f"{par['model.int8.onnx']['min_cosine']:.4f} | {par['model.onnx']['mean_cosine']:.4f} | "
                 f"{inf['mean_cos_to_base_fp32']:.4f} |")
    par = D_INFO["all"]["parity"]["shipped_minilm_int8_vs_base"]
    L.append(f"\nShipped MiniLM int8 vs its fp32 on the same texts: mean cos {par['mean_cosine']:.4f}, "
             f"min {par['min_cosine']:.4f}.")
if HAVE_B:
    L.append("\n## Escalation cost (c): mpnet segments per prompt / share of embedded segments escalated\n")
    L.append("| benign source | " + " | ".join(f"bar {b}" for b in BARS) + " |"); L.append("|---" * (len(BARS) + 1) + "|")
    L.append("| calibration prompts (cross-fitted) | " + " | ".join(
        f"{configs[f'c_bar{b}']['cal_esc_per_prompt']:.3f} / {configs[f'c_bar{b}']['cal_esc_share']:.1%}" for b in BARS) + " |")
    for src in sorted(results[f"c_bar{BARS[0]}"]["esc"]):
        cells = []
        for b in BARS:
            e, t, n = results[f"c_bar{b}"]["esc"][src]
            cells.append(f"{e / n:.3f} / {e / max(t, 1):.1%}")
        e0, t0, n0 = results[f"c_bar{BARS[0]}"]["esc"][src]
        L.append(f"| {src} ({n0} prompts, {t0 / n0:.2f} MiniLM segs/prompt) | " + " | ".join(cells) + " |")
open(f"{EXP}/mpnet_results{SUFFIX}.md", "w").write("\n".join(L) + "\n")
print("\n".join(L))
pickle.dump({k: {kk: vv for kk, vv in v.items() if kk != "cfg"} for k, v in results.items()}, open(f"{EXP}/combined{SUFFIX}.pkl", "wb"))
