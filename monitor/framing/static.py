"""Static (bag-of-token) sentence embeddings: the transformer-free prefilter of framing detection.

A table lookup per word piece (calibration builds the table from the embedder's vocabulary), so screening a
segment costs microseconds and the transformer is asked only about the few that might matter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


class StaticEncoder:
    """Mean of per-word-piece vectors from calibrate's table: a transformer-free sentence embedding."""

    def __init__(self, static: Mapping[str, np.ndarray]) -> None:
        from tokenizers import Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import WordPiece

        vocab = {str(tok): i for i, tok in enumerate(static["vocab"].tolist())}
        tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None,
                                                          clean_text=True, handle_chinese_chars=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.enable_truncation(128)
        self._tokenizer = tokenizer
        self._table = np.asarray(static["vectors"], dtype=np.float32)
        self.dim = self._table.shape[1]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim), L2-normalised; an empty text gives a zero row."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]
        lengths = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter((t for i in ids for t in i), dtype=np.int64, count=int(lengths.sum()))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        nonempty = lengths > 0
        if flat.size:
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[nonempty]
            sums = np.add.reduceat(self._table[flat], starts, axis=0)
            out[nonempty] = sums / lengths[nonempty, None]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-6)


