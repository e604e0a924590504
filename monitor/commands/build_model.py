"""``framewatch build-model``: export the sentence embedder to ONNX (needs the ``[build]`` extra: torch)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monitor.settings import REPO_DIR, default_model_dir

PARITY_TEXTS = REPO_DIR / "data" / "parity_texts.jsonl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=default_model_dir(), help="output folder (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the model exists")


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    # model.int8.onnx (dynamic per-channel int8) is what everything loads by default
    # (settings.DEFAULT_EMBEDDING_ONNX_FILE); model.onnx is the fp32 export it is quantised from.
    wanted = ["model.onnx", "model.int8.onnx", "manifest.json"]
    if all((out / name).exists() for name in wanted) and not args.force:
        print(f"model already built at {out} (use --force to rebuild)")
        return 0
    try:
        from monitor import _export
    except ImportError as exc:  # pragma: no cover - depends on the environment
        print(f"build-model needs the [build] extra (torch, sentence-transformers): {exc}")
        return 2
    texts = [json.loads(line)["text"] for line in PARITY_TEXTS.read_text().splitlines() if line.strip()]
    texts = list(dict.fromkeys(texts))  # duplicates would make nearest-neighbour agreement ambiguous
    manifest = _export.export(out, parity_texts=texts)
    for name, entry in manifest["files"].items():
        p = entry["parity"]
        print(f"{out / name}: {entry['bytes'] / 1e6:.1f} MB, parity vs sentence-transformers on {len(texts)} texts: "
              f"mean cosine {p['mean_cosine']}, min {p['min_cosine']}, NN agreement {p['nearest_neighbour_agreement']}")
    return 0
