"""Option (d) of issue 16 item 4: a contrastive, SetFit-style fine-tune of the MiniLM segment encoder, exported to
ONNX int8 like the shipped model, then the same heads and thresholds (fit.py) on its embeddings.

Pairs come only from calibration's own training data, built as prep.py builds it (the same functions and seeds):
per cluster, trigger positives paired with each other (label 1), with the cluster's look-alikes, with benign
calibration segments / generated benign system prompts and with other clusters' positives (label 0), and
look-alikes paired with benign text (label 1: both are "not this trigger"); SetFit's CosineSimilarityLoss. No
untuned evaluation source is read. Every text is spelling-corrected as the detector corrects it before embedding.

Held-out-family honesty: the nine held-out families of prep.py are split round-robin (prep order) into three
groups; encoder ``g<k>`` is fine-tuned with group k's family sentences removed from the written training data
(as prep.py removes one family for the heads), and only group k's held-out rows are read from its embeddings.
Encoder ``all`` (no family removed) gives the evaluation-set table and the cross-fitted benign FPR.

Usage (from the repository root; scratch ``$FW_EXP_DIR``, default /tmp/fw/exp, needs prep.pkl there):
    setfit.py train g0|g1|g2|all    fine-tune -> $FW_EXP_DIR/setfit_<g>/st, export -> setfit_<g>/onnx, info.json
    setfit.py pairs g0|g1|g2|all    build and count the pairs only (no training)
    setfit.py speed all             texts/s, one text per run, shipped MiniLM int8 vs setfit_all int8 interleaved
then ``embed.py setfit_<g>`` and ``fit.py setfit_<g>`` as for the other options, and combine.py.
Threads: ``$FW_THREADS`` (default 1) for torch. ``$FW_SMOKE_PAIRS=n``: train on n pairs only, into smoke_<g>.
"""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXP = Path(os.environ.get("FW_EXP_DIR", "/tmp/fw/exp"))  # scratch, as the other scripts (this run: /tmp/fw/exp_setfit)
import json
import pickle
import random
import re
import shutil
import sys
import time
from typing import Any, cast

import numpy as np

sys.path.insert(0, str(REPO))
from monitor.framing import calibration as cal
from monitor.framing import variation
from monitor.framing.registry import DEFAULT_REGISTRY, load_registry
from monitor.framing.spelling import Speller

SEED = 0
MAX_SEQ = 64  # training only; the ONNX export embeds at the sidecar's 256 like the shipped model
BATCH = 16
LR = 2e-5  # SetFit's body learning rate
WARMUP = 0.1
# pairs per cluster: (positive, positive) 1 | (positive, own look-alike) 0 | (positive, benign) 0 |
# (positive, other cluster's positive) 0 | (look-alike, benign) 1
PER_CLUSTER = dict(pp=160, pl=120, pb=80, px=40, lb=40)
N_GROUPS = 3
# variant d2: (d)'s pairs plus, per persona cluster, that many (positive, operator system prompt) pairs labelled 0;
# operator prompts = calibration's generated benign system prompts (benign_systems) and the benign calibration
# segments in the "system" position (team-system-2026-11, tuned on); EDGY_SHARE of the partners are drawn from the
# operator prompts that play a named or in-character role (EDGY), the rest from all operator prompts.
D2_PER_CLUSTER = dict(evil_persona=600, identity_system_prompt=150)
EDGY_SHARE = 0.5
EDGY = re.compile(r"\b(?:you(?:'re| are)|your name is|you play|playing)\s+(?:[A-Z][a-z]+|the [a-z]+ (?:character|persona))"
                  r"|\b(?:character|persona|role-?play|stay in character|snark\w*|sarcas\w*|grump\w*|villain\w*|"
                  r"pirate\w*|wizard|dragon|detective|game master|dungeon|security|hack\w*|spooky|mischiev\w*)\b",
                  re.IGNORECASE)
VARIANTS = ("d", "d2")


def groups_of(families: list[dict[str, Any]]) -> dict[str, list[tuple[str, str]]]:
    """Round-robin over prep.py's held-out families: g0, g1, g2 (each mixes clusters where there are any)."""
    out: dict[str, list[tuple[str, str]]] = {f"g{k}": [] for k in range(N_GROUPS)}
    for i, F in enumerate(families):
        out[f"g{i % N_GROUPS}"].append((F["cluster"], F["family"]))
    return out


def out_dir(group: str, variant: str) -> Path:
    return EXP / (f"setfit_{group}" if variant == "d" else f"setfit_{variant}_{group}")


def build_pairs(group: str, variant: str = "d") -> tuple[list[tuple[str, str, float]], dict[str, Any]]:
    P = pickle.load(open(f"{EXP}/prep.pkl", "rb"))
    held = [] if group == "all" else groups_of(P["families"])[group]
    # calibration's training data exactly as prep.py builds it
    registry = load_registry(DEFAULT_REGISTRY, with_model=False)
    data = cal.load_training_data(cal.DEFAULT_TEMPLATES, cal.DEFAULT_WRITTEN, cal.DEFAULT_BENIGN, "calibration")
    benign, templates = data.benign, data.templates
    hosts = [u for _, u in benign if len(u) < 200] or ["Tell me about your day."]
    generated = cal.expand_templates([t for t in templates if "texts" not in t])
    written = cal.expand_templates([t for t in templates if "texts" in t])
    for v in variation.generate(cal.VARIATION_PER_FAMILY):
        written.setdefault(v.cluster, {}).setdefault(v.label, []).append(v.text)
    lexicon = cal.trigger_lexicon(registry, [generated, written])
    static = cal.reusable_static(DEFAULT_REGISTRY)
    assert static is not None
    speller = Speller(lexicon, known=static["vocab"].tolist())
    # the group's families removed from the positives, as prep.py removes one family for its heads
    removed = {(v.cluster, v.text) for v in variation.generate(cal.VARIATION_PER_FAMILY)
               if (v.cluster, v.family) in set(held)}
    reduced = {c: {lab: [x for x in ts if not (lab == 1 and (c, x) in removed)] for lab, ts in labels.items()}
               for c, labels in written.items()}
    positives, lookalikes, benign_systems, _, _ = cal.training_sets(registry, generated, reduced, hosts)
    if group == "all":
        assert positives == P["positives"] and lookalikes == P["lookalikes"], "training data differs from prep.pkl"
    n_removed = sum(len(P["positives"][c]) for c in positives) - sum(len(v) for v in positives.values())
    benign_texts = list(dict.fromkeys([s.text for segs in P["segmented"] for s in segs] + list(benign_systems)))
    fix = dict(P["corrected"])

    def corr(ts: list[str]) -> list[str]:
        return list(dict.fromkeys(fix[t] if t in fix else speller.correct(t) for t in ts))

    pos = {c: corr(ts) for c, ts in positives.items()}
    look = {c: [t for t in corr(ts) if t not in set(pos[c])] for c, ts in lookalikes.items()}
    ben = corr(benign_texts)
    all_pos = {t for ts in pos.values() for t in ts}
    ben = [t for t in ben if t not in all_pos]
    rng = random.Random(SEED)
    pairs: list[tuple[str, str, float]] = []
    for c in registry.cluster_ids():
        pc, lc = pos[c], look[c]
        others = [t for d, ts in pos.items() if d != c for t in ts if t not in set(pc)]
        for _ in range(PER_CLUSTER["pp"]):
            a, b = rng.sample(pc, 2) if len(pc) > 1 else (pc[0], pc[0])
            pairs.append((a, b, 1.0))
        for _ in range(PER_CLUSTER["pl"] if lc else 0):
            pairs.append((rng.choice(pc), rng.choice(lc), 0.0))
        for _ in range(PER_CLUSTER["pb"]):
            pairs.append((rng.choice(pc), rng.choice(ben), 0.0))
        for _ in range(PER_CLUSTER["px"]):
            pairs.append((rng.choice(pc), rng.choice(others), 0.0))
        for _ in range(PER_CLUSTER["lb"] if lc else 0):
            pairs.append((rng.choice(lc), rng.choice(ben), 1.0))
    extra: dict[str, int] = {}
    if variant == "d2":  # a separate generator: (d)'s pairs above stay exactly as they are
        system_segments = [s.text for segs in P["segmented"] for s in segs if s.position == "system"]
        operators = [t for t in corr(list(dict.fromkeys(list(benign_systems) + system_segments))) if t not in all_pos]
        edgy = [t for t in operators if EDGY.search(t)]
        rng2 = random.Random(SEED + 1)
        for c, n in D2_PER_CLUSTER.items():
            for _ in range(n):
                partner = rng2.choice(edgy if edgy and rng2.random() < EDGY_SHARE else operators)
                pairs.append((rng2.choice(pos[c]), partner, 0.0))
        extra = dict(operator_prompts=len(operators), edgy_operator_prompts=len(edgy), **D2_PER_CLUSTER,
                     edgy_share=EDGY_SHARE)
    pairs = [p for p in dict.fromkeys(pairs) if p[0] != p[1]]
    rng.shuffle(pairs)
    # no held-out fresh sentence of this group may be in the pairs (they are another seed, but check)
    tests = {fix.get(t, t) for F in P["families"] if (F["cluster"], F["family"]) in set(held) for t in F["tests"]}
    leak = sum((a in tests) + (b in tests) for a, b, _ in pairs)
    info = dict(group=group, variant=variant, d2_pairs=extra, held_out=[f"{c}/{f}" for c, f in held], pairs=len(pairs),
                positive_pairs=sum(1 for p in pairs if p[2] == 1.0), positives_removed=n_removed,
                texts=len({t for a, b, _ in pairs for t in (a, b)}), held_out_test_texts_in_pairs=leak)
    assert leak == 0, info
    return pairs, info


def train(group: str, variant: str = "d") -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
    from transformers import get_linear_schedule_with_warmup

    from monitor._export import OPSET, _mark_batch_dependent, _parity_entry, source_model_dir

    torch.set_num_threads(int(os.environ.get("FW_THREADS", "1")))
    pairs, info = build_pairs(group, variant)
    print(json.dumps(info), flush=True)
    out = out_dir(group, variant)
    if os.environ.get("FW_SMOKE_PAIRS"):  # smoke test of the whole path on a few pairs, written apart
        pairs = pairs[:int(os.environ["FW_SMOKE_PAIRS"])]
        out = EXP / f"smoke_{out.name.removeprefix('setfit_')}"
    out.mkdir(parents=True, exist_ok=True)
    random.seed(SEED); np.random.seed(SEED); torch.manual_seed(SEED)
    src = source_model_dir()
    st = SentenceTransformer(str(src), device="cpu")
    st.max_seq_length = MAX_SEQ
    loss_fn = CosineSimilarityLoss(st)
    steps = (len(pairs) + BATCH - 1) // BATCH
    opt = torch.optim.AdamW(st.parameters(), lr=LR)
    sched = get_linear_schedule_with_warmup(opt, int(WARMUP * steps), steps)
    st.train()
    t0 = time.time()
    losses = []
    for k in range(steps):
        batch = pairs[k * BATCH:(k + 1) * BATCH]
        fa = st.tokenize([a for a, _, _ in batch])
        fb = st.tokenize([b for _, b, _ in batch])
        labels = torch.tensor([y for _, _, y in batch], dtype=torch.float32)
        loss = loss_fn([fa, fb], labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
        if k % 50 == 0 or k == steps - 1:
            print(f"step {k + 1}/{steps} loss {np.mean(losses[-50:]):.4f} {time.time() - t0:.0f}s", flush=True)
    train_seconds = time.time() - t0
    st.eval()
    st.save(str(out / "st"))

    # ONNX export as monitor/_export.py does (its export() always reads the shipped source folder)
    st.max_seq_length = 256
    bert = cast(torch.nn.Module, st[0].auto_model).eval()

    class Pooled(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.bert = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    onnx_dir = out / "onnx"
    onnx_dir.mkdir(exist_ok=True)
    onnx_path = onnx_dir / "model.onnx"
    dummy = st.tokenizer(["a sentence to trace the graph", "another one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.onnx.export(
            Pooled(bert).eval(), (dummy["input_ids"], dummy["attention_mask"], dummy["token_type_ids"]),
            str(onnx_path), input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                          "token_type_ids": {0: "batch", 1: "seq"}, "sentence_embedding": {0: "batch"}},
            opset_version=OPSET, dynamo=False)
    shutil.copy(src / "tokenizer.json", onnx_dir / "tokenizer.json")
    texts = [json.loads(line)["text"] for line in (REPO / "data" / "parity_texts.jsonl").read_text().splitlines()
             if line.strip()]
    reference = st.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    base = SentenceTransformer(str(src), device="cpu")
    base_reference = base.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    del st, bert, base
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_path = onnx_dir / "model.int8.onnx"
    quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True)
    _mark_batch_dependent(int8_path)
    info.update(train_seconds=round(train_seconds, 1), steps=steps, batch=BATCH, lr=LR, max_seq_length=MAX_SEQ,
                threads=torch.get_num_threads(), final_loss=round(float(np.mean(losses[-50:])), 4),
                parity_texts=len(texts),
                parity={"model.onnx": _parity_entry(onnx_path, onnx_dir, texts, reference)["parity"],
                        "model.int8.onnx": _parity_entry(int8_path, onnx_dir, texts, reference)["parity"],
                        "shipped_minilm_int8_vs_base": _parity_entry(
                            REPO / "models" / "minilm" / "model.int8.onnx", REPO / "models" / "minilm", texts,
                            base_reference)["parity"]},
                mean_cos_to_base_fp32=round(float(np.sum(reference * base_reference, axis=1).mean()), 4))
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2), flush=True)


if __name__ == "__main__":
    cmd, grp = sys.argv[1], sys.argv[2]
    var = sys.argv[sys.argv.index("--variant") + 1] if "--variant" in sys.argv else "d"
    assert grp in ("all", *(f"g{k}" for k in range(N_GROUPS))), grp
    assert var in VARIANTS, var
    if cmd == "pairs":
        _, i = build_pairs(grp, var)
        print(json.dumps(i))
    elif cmd == "train":
        train(grp, var)
    elif cmd == "speed":  # one text per run, the shipped int8 and this group's int8 interleaved in one process
        from monitor.embedding import Embedder

        models = {"shipped": Embedder.load(REPO / "models" / "minilm", onnx_file="model.int8.onnx", cache_size=0,
                                           threads=int(os.environ.get("FW_ORT_THREADS", "1"))),
                  grp: Embedder.load(out_dir(grp, var) / "onnx", onnx_file="model.int8.onnx", cache_size=0,
                                     threads=int(os.environ.get("FW_ORT_THREADS", "1")))}
        texts = [t.replace("\\n", "\n") for t in (EXP / "to_embed.txt").read_text().split("\n")]
        sample = random.Random(SEED).sample(texts, 300)
        rates: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(5):
            for k, m in models.items():
                t0 = time.perf_counter()
                m.embed(sample)
                rates[k].append(len(sample) / (time.perf_counter() - t0))
        print({k: round(float(np.median(v)), 1) for k, v in rates.items()},
              "ratio", round(float(np.median(np.array(rates["shipped"]) / np.array(rates[grp]))), 3))
    else:
        raise SystemExit(__doc__)
