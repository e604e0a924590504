"""Stage 2: embed every text of to_embed.txt with one model (int8, one text per run: as the sidecar and calibrate
do), in chunks saved as they finish so an interruption loses one chunk. Usage: embed.py minilm|mpnet|setfit_<group>"""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXP = Path(os.environ.get("FW_EXP_DIR", "/tmp/fw/exp"))  # scratch: caches, ONNX files, pickles (~1.2 GB)
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from monitor.embedding import Embedder

name = sys.argv[1]
model_dir = {"minilm": str(REPO / "models" / "minilm"), "mpnet": f"{EXP}/mpnet_onnx"}.get(name)
if name.startswith("setfit_"):  # option (d): the fine-tuned MiniLM of setfit.py, same architecture and export
    model_dir = f"{EXP}/{name}/onnx"
assert model_dir is not None, name
# max_tokens: MiniLM (and its fine-tunes) as configured for the sidecar (256); mpnet as exported (128).
# Segments are <= 300 chars. $FW_ORT_THREADS: onnxruntime intra-op threads (0 = its default).
emb = Embedder.load(model_dir, onnx_file="model.int8.onnx", cache_size=0, max_tokens=128 if name == "mpnet" else 256,
                    threads=int(os.environ.get("FW_ORT_THREADS", "0")))
assert emb.batch_size == 1
texts = [t.replace("\\n", "\n") for t in Path(f"{EXP}/to_embed.txt").read_text().split("\n")]
out = Path(f"{EXP}/cache_{name}"); out.mkdir(exist_ok=True)
CHUNK = 2000
t0 = time.time()
for i in range(0, len(texts), CHUNK):
    p = out / f"{i // CHUNK:04d}.npy"
    if p.exists():
        continue
    np.save(p, emb.embed(texts[i:i + CHUNK]).astype(np.float32))
    done = i + CHUNK
    print(f"{name} {min(done, len(texts))}/{len(texts)} {time.time() - t0:.0f}s", flush=True)
