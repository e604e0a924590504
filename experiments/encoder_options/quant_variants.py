"""Which part of mpnet's dynamic int8 quantisation loses parity? Reference: the fp32 ONNX (parity 1.0 vs ST)."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXP = Path(os.environ.get("FW_EXP_DIR", "/tmp/fw/exp"))  # scratch: caches, ONNX files, pickles (~1.2 GB)
import json
import sys
import time
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from monitor._export import _mark_batch_dependent
from monitor.embedding import Embedder

SRC = Path(f"{EXP}/mpnet_onnx")
OUT = Path(f"{EXP}/qvariants")
texts = [json.loads(l)["text"] for l in open(str(REPO) + "/data/parity_texts.jsonl") if l.strip()]
texts = texts[::4][:57]
ref = Embedder.load(SRC, onnx_file="model.onnx", cache_size=0, max_tokens=128).embed(texts)
m = onnx.load(str(SRC / "model.onnx"), load_external_data=False)
matmuls = [n.name for n in m.graph.node if n.op_type == "MatMul"]
ffn2 = [n for n in matmuls if "/output/dense/" in n]
ffn1 = [n for n in matmuls if "/intermediate/dense/" in n]
variants = {
    "all_default": dict(),
    "matmul_only": dict(op_types_to_quantize=["MatMul"]),
    "matmul_no_ffn2": dict(op_types_to_quantize=["MatMul"], nodes_to_exclude=ffn2),
    "no_ffn2_6to10": dict(op_types_to_quantize=["MatMul"], nodes_to_exclude=[n for n in ffn2 if n.split("/")[3] in {f"layer.{i}" for i in range(6, 11)}]),
    "all_no_ffn2_6to10": dict(nodes_to_exclude=[n for n in ffn2 if n.split("/")[3] in {f"layer.{i}" for i in range(6, 11)}]),
    "no_ffn2_0_6to10": dict(op_types_to_quantize=["MatMul"], nodes_to_exclude=[n for n in ffn2 if n.split("/")[3] in {f"layer.{i}" for i in (0, 6, 7, 8, 9, 10)}]),
    "matmul_no_ffn": dict(op_types_to_quantize=["MatMul"], nodes_to_exclude=ffn2 + ffn1),
}
for name in sys.argv[1:] or variants:
    kw = variants[name]
    d = OUT / name; d.mkdir(exist_ok=True)
    (d / "tokenizer.json").write_bytes((SRC / "tokenizer.json").read_bytes())
    p = d / "model.int8.onnx"
    if not p.exists():
        quantize_dynamic(str(SRC / "model.onnx"), str(p), weight_type=QuantType.QInt8, per_channel=True, **kw)
        _mark_batch_dependent(p)
    e = Embedder.load(d, onnx_file=p.name, cache_size=0, max_tokens=128)
    t = time.perf_counter(); v = e.embed(texts); dt = time.perf_counter() - t
    cos = (v * ref).sum(1)
    print(f"{name:16} mean {cos.mean():.4f} min {cos.min():.4f} bytes {p.stat().st_size/1e6:.0f}MB  {len(texts)/dt:.1f}/s", flush=True)
