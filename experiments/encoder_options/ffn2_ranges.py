"""Input range of each layer's FFN2 MatMul (GELU output) in the fp32 graph: dynamic int8 uses one scale per run."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXP = Path(os.environ.get("FW_EXP_DIR", "/tmp/fw/exp"))  # scratch: caches, ONNX files, pickles (~1.2 GB)
import json

import numpy as np
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

m = onnx.load(f"{EXP}/mpnet_onnx/model.onnx")
names = {}
for n in m.graph.node:
    if n.op_type == "MatMul" and "/output/dense/" in n.name:
        names[n.name.split("/")[3]] = n.input[0]
for v in names.values():
    m.graph.output.append(onnx.helper.make_tensor_value_info(v, onnx.TensorProto.FLOAT, None))
s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
tok = Tokenizer.from_file(f"{EXP}/mpnet_onnx/tokenizer.json")
texts = [json.loads(l)["text"] for l in open(str(REPO) + "/data/parity_texts.jsonl") if l.strip()][::8]
stats = {k: [] for k in names}
for t in texts:
    ids = np.array([tok.encode(t).ids], dtype=np.int64)
    outs = s.run(list(names.values()), {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    for k, o in zip(names, outs):
        stats[k].append((o.max(), o.min(), np.percentile(np.abs(o), 99.9)))
for k, v in stats.items():
    a = np.array(v); print(k, "max %.1f min %.2f p99.9 %.2f" % (a[:, 0].max(), a[:, 1].min(), a[:, 2].mean()))
