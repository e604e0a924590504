"""Shared fixtures. Parts are real: the ONNX model built by ``framewatch build-model``, a Tansu broker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = Path(os.environ.get("FRAMEWATCH_MODEL_DIR", REPO / "models" / "minilm"))
SHARED = REPO.parent / "shared" / "data"

needs_model = pytest.mark.skipif(
    not (MODEL_DIR / "model.onnx").exists(),
    reason=f"no ONNX model at {MODEL_DIR}: run 'make model' (framewatch build-model) first",
)
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason=f"{SHARED} is absent (only in the project workspace)")


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    if not (MODEL_DIR / "model.onnx").exists():
        pytest.skip(f"no ONNX model at {MODEL_DIR}: run 'make model' first")
    from monitor.embedding import Embedder

    return Embedder.load(MODEL_DIR)

