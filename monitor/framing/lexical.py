"""Hashed word and word-pair features of a short segment, the framing scorers' second input.

Why next to the transformer embedding: a linear model over a MiniLM sentence embedding sees the meaning
of the whole segment but cannot single out the few words that decide between a trigger and its look-alike:
"never act as a malicious assistant", "how do I extract the text between <start> and <end>", "my boss wants
the bot to answer within <start> tags", or the cue words of an instruction ("respond", "enclose", "you're").
The mean-pooled embedding averages them away. Words and word pairs, hashed into a small fixed space and
scaled below the embedding, let the per-cluster model weigh them (measured with ``framewatch eval-framing``
on six hand-written development sets: the same look-alike rate at higher recall, and fewer benign prompts
flagged; see ``monitor/commands/calibrate.py``).

The hashing is fixed (CRC-32 of the lower-cased token or token pair, modulo ``dim``) and named by
:data:`KIND`, which ``calibrate`` stores with the weights: a detector refuses weights trained on features it
does not compute. Only segments the transformer embeds are featurised, so the cost is a few microseconds per
embedded segment.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Name of the feature definition below; bump it when tokens, pairs or hashing change.
KIND = "hashed-words-pairs/1"
DEFAULT_DIM = 2048
DEFAULT_SCALE = 0.5  # L2 norm of a segment's lexical block; the embedding block has norm 1

# Words, and the brackets, quotes and question marks that distinguish "<start>" from "start" and a question
# from an instruction.
_TOKEN = re.compile(r"\w+|[<>\[\]{}?!'\"]")


@dataclass(frozen=True)
class LexicalFeatures:
    """Binary presence of each token and adjacent token pair, hashed into ``dim`` columns, L2-normalised to
    ``scale``."""

    dim: int = DEFAULT_DIM
    scale: float = DEFAULT_SCALE

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, for training; an empty text gives a zero row."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            columns = self.columns(text)
            if columns.size:
                out[i, columns] = self.scale / np.sqrt(columns.size)
        return out

    def project(self, texts: Sequence[str], weights: np.ndarray) -> np.ndarray:
        """``encode(texts) @ weights`` without the dense matrix: a sum of a few weight rows per text. Also
        keeps the multiply out of BLAS, whose idle threads would compete with onnxruntime's (measured:
        the framing benchmark lost 15% to a dense (n, 2048) x (2048, k) product)."""
        out = np.zeros((len(texts), weights.shape[1]), dtype=np.float32)
        for i, text in enumerate(texts):
            columns = self.columns(text)
            if columns.size:
                out[i] = weights[columns].sum(axis=0) * (self.scale / np.sqrt(columns.size))
        return out

    def columns(self, text: str) -> np.ndarray:
        """The distinct columns set for ``text``: its lower-cased tokens and adjacent token pairs, hashed."""
        tokens = _TOKEN.findall(text.lower())
        features = {*tokens, *(f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False))}
        return np.unique(np.fromiter((_column(f, self.dim) for f in features), dtype=np.int64,
                                     count=len(features)))


def _column(feature: str, dim: int) -> int:
    return zlib.crc32(feature.encode("utf-8", "surrogatepass")) % dim
