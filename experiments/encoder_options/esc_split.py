"""Escalated segments per benign prompt split by position (system prompts are shared and their verdicts cached)."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXP = Path(os.environ.get("FW_EXP_DIR", "/tmp/fw/exp"))  # scratch: caches, ONNX files, pickles (~1.2 GB)
import pickle
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from monitor.framing.registry import DEFAULT_REGISTRY, load_registry
from monitor.framing.segmenting import POSITIONS

P = pickle.load(open(f"{EXP}/prep.pkl", "rb")); A = pickle.load(open(f"{EXP}/fit_minilm.pkl", "rb"))
reg = load_registry(DEFAULT_REGISTRY, with_model=False)
allowed = {p: np.array([c.allows(p) for c in reg.clusters]) for p in POSITIONS}
for bar in (0.1, 0.2):
    acc = defaultdict(lambda: [0, 0, 0])
    for e, pa in zip(P["evalsets"], A["evals"]):
        if e["kind"] != "benign":
            continue
        a = acc[e["source"]]; a[2] += 1
        for (t, pos), row in zip(e["segments"], pa):
            if (np.where(allowed[pos], row, 0) >= bar).any():
                a[0 if pos == "system" else 1] += 1
    print(bar, {s: f"system {v[0]/v[2]:.3f} user {v[1]/v[2]:.3f}" for s, v in acc.items()})
