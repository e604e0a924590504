"""The framing model file: one writer, one reader, deterministic bytes, refusals that say why."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from monitor.framing.lexical import LexicalFeatures
from monitor.framing.model_file import ClusterModel, FramingModel, ModelFileError, read_model, write_model
from monitor.framing.segmenting import POSITIONS


def _model(seed: int = 0) -> FramingModel:
    rng = np.random.default_rng(seed)
    m = ClusterModel(rng.normal(size=8).astype(np.float32), 0.5, rng.normal(size=4).astype(np.float32), -0.1, 0.3,
                     rng.normal(size=16).astype(np.float32), rng.normal(size=len(POSITIONS)).astype(np.float32))
    static = {"vectors": rng.normal(size=(5, 4)).astype(np.float16), "vocab": np.array(list("abcde"))}
    return FramingModel({"tag_wrapper": m}, static, {"evil": 3, "assistant": 7}, LexicalFeatures(dim=16, scale=0.5))


def test_written_twice_the_file_is_byte_identical(tmp_path: Path) -> None:
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    write_model(a, _model())
    write_model(b, _model())
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def test_what_is_written_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    original = _model()
    write_model(path, original)
    back = read_model(path, {"tag_wrapper", "duck_phrase"})
    assert set(back.models) == {"tag_wrapper"}  # a cluster without weights is simply absent
    m, o = back.models["tag_wrapper"], original.models["tag_wrapper"]
    np.testing.assert_array_equal(m.weights, o.weights)
    np.testing.assert_array_equal(m.position_bias, o.position_bias)  # type: ignore[arg-type]
    assert m.static_threshold == pytest.approx(o.static_threshold)
    assert back.lexicon == {"evil": 3, "assistant": 7}
    assert back.lexical == LexicalFeatures(dim=16, scale=0.5)


def test_a_corrupt_or_inconsistent_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ModelFileError, match="cannot read model file"):
        read_model(bad, {"tag_wrapper"})
    model = _model()
    m = model.models["tag_wrapper"]
    broken = FramingModel({"tag_wrapper": ClusterModel(m.weights, m.bias, m.static_weights, m.static_bias,
                                                       m.static_threshold, m.lexical_weights,
                                                       np.zeros(2, np.float32))}, model.static, {}, model.lexical)
    write_model(bad, broken)
    with pytest.raises(ModelFileError, match="position biases"):
        read_model(bad, {"tag_wrapper"})
    weights = m.weights.copy()
    weights[0] = np.nan
    write_model(bad, FramingModel({"tag_wrapper": ClusterModel(weights, m.bias, m.static_weights, m.static_bias,
                                                               m.static_threshold)}, model.static, {}, None))
    with pytest.raises(ModelFileError, match="not all finite"):
        read_model(bad, {"tag_wrapper"})
