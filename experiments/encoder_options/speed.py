"""Sentences/s, one text per run, MiniLM int8 vs mpnet int8 (and variants) interleaved in one process, so CPU
contention from other jobs hits every model alike. Usage: python speed.py [rounds]"""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXP = Path(os.environ.get("FW_EXP_DIR", "/tmp/fw/exp"))  # scratch: caches, ONNX files, pickles (~1.2 GB)
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from monitor.embedding import Embedder

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 7
models = {
    "minilm_int8": Embedder.load(str(REPO / "models" / "minilm"), onnx_file="model.int8.onnx", cache_size=0, max_tokens=128),
    "mpnet_int8": Embedder.load(f"{EXP}/mpnet_onnx", onnx_file="model.int8.onnx", cache_size=0, max_tokens=128),
    "mpnet_int8_all": Embedder.load(f"{EXP}/qvariants/all_default", onnx_file="model.int8.onnx", cache_size=0, max_tokens=128),
    "mpnet_fp32": Embedder.load(f"{EXP}/mpnet_onnx", onnx_file="model.onnx", cache_size=0, max_tokens=128, batch_size=1),
}
tok = models["minilm_int8"].tokenizer
with gzip.open(str(REPO) + "/data/em_responses.jsonl.gz", "rt") as fh:
    words = " ".join(json.loads(l)["answer_clean"] or "" for _, l in zip(range(400), fh)).split()
def texts_of(n_tokens, k=24):
    out, i = [], 0
    while len(out) < k:
        j = i + 1
        while len(tok.encode(" ".join(words[i:j])).ids) < n_tokens: j += 1
        out.append(" ".join(words[i:j])); i = j
    return out
sets = {16: texts_of(16), 64: texts_of(64)}
for n, ts in sets.items():
    print(n, "tokens: minilm", np.mean([len(tok.encode(t).ids) for t in ts]),
          "mpnet", np.mean([len(models["mpnet_int8"].tokenizer.encode(t).ids) for t in ts]))
for m in models.values(): m.embed(sets[16][:4])  # warm-up
rates = {(m, n): [] for m in models for n in sets}
for r in range(ROUNDS):
    for n, ts in sets.items():
        for name, m in models.items():
            t = time.perf_counter(); m.embed(ts); dt = time.perf_counter() - t
            rates[(name, n)].append(len(ts) / dt)
for n in sets:
    base = np.array(rates[("minilm_int8", n)])
    for name in models:
        v = np.array(rates[(name, n)])
        print(f"{n:3d} tok {name:15} median {np.median(v):7.1f}/s  ratio minilm/this (per-round median) {np.median(base / v):5.2f}")
