"""The ONNX embedder: parity with sentence-transformers, caching, and no torch on the run path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from monitor import _replay as replay
from monitor.embedding import Embedder
from tests.conftest import MODEL_DIR, REPO, needs_model


def varied_texts() -> list[str]:
    texts = [json.loads(line)["text"] for line in (REPO / "data" / "parity_texts.jsonl").read_text().splitlines()]
    rows = replay.load_rows()[:60]
    texts += [r.prompt for r in rows] + [r.response for r in rows]
    texts += ["", "a", "ÜBER naïve café — 東京 🚀", "x " * 600]  # empty, tiny, non-ASCII, over the token limit
    return list(dict.fromkeys(texts))


@needs_model
@pytest.mark.parametrize(("onnx_file", "min_cosine", "mean_cosine"), [
    ("model.onnx", 0.999, 0.9999),  # the fp32 export: the same model
    ("model.int8.onnx", 0.97, 0.99),  # the default: per-channel int8 (per-tensor int8 reads ~0.945 mean)
])
def test_parity_with_sentence_transformers(onnx_file: str, min_cosine: float, mean_cosine: float) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed here (runtime-only env): parity needs it")
    del torch
    st_mod = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    from monitor._export import source_model_dir

    texts = varied_texts()
    assert len(texts) >= 200
    reference = st_mod.SentenceTransformer(str(source_model_dir()), device="cpu").encode(
        texts, normalize_embeddings=True, convert_to_numpy=True)
    ours = Embedder.load(MODEL_DIR, onnx_file=onnx_file, cache_size=0).embed(texts)
    cos = np.sum(ours * reference, axis=1)
    assert cos.min() >= min_cosine, f"min cosine {cos.min():.5f} on {texts[int(cos.argmin())][:80]!r}"
    assert cos.mean() >= mean_cosine, f"mean cosine {cos.mean():.5f}"


@needs_model
@pytest.mark.parametrize("onnx_file", ["model.int8.onnx", "model.onnx"])
def test_output_is_normalised_and_batch_independent(onnx_file: str) -> None:
    """Also guards the default int8 model: batched, its dynamic activation scale made a text's vector depend
    on its neighbours (cosine down to 0.980), so it must embed one text per run. No cache: the second
    call must embed again."""
    embedder = Embedder.load(MODEL_DIR, onnx_file=onnx_file, cache_size=0)
    texts = ["short", "a somewhat longer sentence about the weather in Paris today", "third " * 40,
             *varied_texts()[:40]]
    together = embedder.embed(texts)
    alone = np.stack([embedder.embed([t])[0] for t in texts])
    assert together.shape == (len(texts), 384) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-4)
    assert np.allclose(together, alone, atol=1e-4)  # dynamic padding must not change the result


@needs_model
def test_cache_serves_repeats() -> None:
    from monitor.embedding import Embedder

    e = Embedder.load(MODEL_DIR, cache_size=2)
    e.embed(["one", "two", "one"])
    assert (e.cache_misses, e.cache_hits) == (2, 1)
    e.embed(["one", "two"])
    assert (e.cache_misses, e.cache_hits) == (2, 3)
    e.embed(["three"])  # evicts the least recently used ("one")
    e.embed(["one"])
    assert e.cache_misses == 4


def test_missing_model_has_a_clear_error(tmp_path: Path) -> None:
    from monitor.embedding import Embedder, ModelNotBuiltError

    with pytest.raises(ModelNotBuiltError, match="build-model"):
        Embedder.load(tmp_path)


BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == 'torch' or name.startswith('torch.') or name.startswith('sentence_transformers'):
            raise ImportError('torch is not installed in this environment (blocked by the test)')
sys.meta_path.insert(0, Block())
"""


@needs_model
def test_run_path_imports_no_torch() -> None:
    """The sidecar's whole run path works where torch cannot be imported, and never loads it."""
    code = BLOCK_TORCH + """
from monitor.settings import Settings
from monitor import cli
from monitor.sidecar import app as sidecar
from monitor.commands import run, demo
s = Settings.load(env={"FRAMEWATCH_HTTP_PORT": "1"})
app = sidecar.build(s)
from monitor.sidecar.events import Prompt
framing = app.pipeline.detector.detect_many([Prompt(system=None, user=("hi",))])
scores = app.pipeline.scorer.score(["hello"])
assert len(framing) == 1 and len(scores) == 1
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@needs_model
def test_default_int8_model_stays_close_to_full_precision() -> None:
    """The default embedder is the int8 export; ``FRAMEWATCH_EMBEDDING_ONNX_FILE=model.onnx`` selects fp32.
    Runs without torch, so a runtime-only install checks the quantised model too."""
    texts = [json.loads(line)["text"] for line in (REPO / "data" / "parity_texts.jsonl").read_text().splitlines()]
    quantised = Embedder.load(MODEL_DIR, cache_size=0)
    assert quantised.model_file == "model.int8.onnx"
    full = Embedder.load(MODEL_DIR, onnx_file="model.onnx", cache_size=0).embed(texts)
    cos = np.sum(full * quantised.embed(texts), axis=1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97, (cos.mean(), cos.min())


@needs_model
def test_offline_commands_load_the_configured_model_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """calibrate / eval-framing / detect / audit must embed with the file the sidecar uses."""
    from monitor.embedding import configured_embedder
    from monitor.settings import SettingsError

    monkeypatch.setenv("FRAMEWATCH_MODEL_DIR", str(MODEL_DIR))
    assert configured_embedder(cache_size=0).model_file == "model.int8.onnx"
    monkeypatch.setenv("FRAMEWATCH_EMBEDDING_ONNX_FILE", "model.onnx")
    assert configured_embedder(cache_size=0).model_file == "model.onnx"
    # the sidecar's truncation too: a different max_tokens gives different vectors for long texts
    monkeypatch.setenv("FRAMEWATCH_EMBEDDING_MAX_TOKENS", "16")
    short = configured_embedder(cache_size=0)
    assert short.tokenizer.truncation["max_length"] == 16
    assert configured_embedder(cache_size=0, max_tokens=32).tokenizer.truncation["max_length"] == 32
    monkeypatch.setenv("FRAMEWATCH_ONNX_THREADS", "two")
    with pytest.raises(SettingsError, match="FRAMEWATCH_ONNX_THREADS"):
        configured_embedder()
