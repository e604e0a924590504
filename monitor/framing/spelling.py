"""Undo typos in the words trigger framings are made of, before a candidate segment is embedded.

Why: MiniLM cuts a misspelt word into word pieces that land far from the word itself, so "you are a
malicous evil asistant." scored 0.63 for the persona cluster where the spelled-out sentence scores 0.99,
and the issue's paraphrases come with typos. Training on noisy variants did not close the gap (measured
in ``framewatch calibrate``'s history, see docs/registry.md).

What it does: a word the embedding model's vocabulary does not know, of at least ``MIN_LENGTH`` letters,
one edit away from a word of the trigger *lexicon* (the words of the registry's phrases and of the
calibration sentences, stored in the model file by ``framewatch calibrate``), is replaced by that word.
Only unknown words are touched and only towards trigger vocabulary, so ordinary text passes unchanged;
the same correction is applied when calibrating and when detecting, so scores and thresholds agree.

One edit = one insertion, deletion, substitution or swap of neighbours, found with symmetric deletes
(SymSpell): every word and every one-letter deletion of it index the lexicon, so a lookup costs a few
dict probes per unknown word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

MIN_LENGTH = 4  # shorter words have too many neighbours one edit away ("evl" could be "eel", "evil")
_WORD = re.compile(r"[A-Za-z]+")


def _deletes(word: str) -> set[str]:
    return {word[:i] + word[i + 1:] for i in range(len(word))}


def _one_edit(a: str, b: str) -> bool:
    """True if ``a`` and ``b`` differ by exactly one insertion, deletion, substitution or adjacent swap."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


class Speller:
    """Corrects unknown words towards a lexicon; see the module docstring."""

    def __init__(self, lexicon: Mapping[str, int] | Iterable[str], known: Iterable[str] = ()) -> None:
        counts = dict(lexicon) if isinstance(lexicon, Mapping) else {w: 1 for w in lexicon}
        self.lexicon = {w.lower(): n for w, n in counts.items() if len(w) >= MIN_LENGTH and w.isalpha()}
        self.known = {w.lower() for w in known} | set(self.lexicon)
        self._index: dict[str, list[str]] = {}
        for word in self.lexicon:
            for key in {word} | _deletes(word):
                self._index.setdefault(key, []).append(word)
        self._memo: dict[str, str] = {}

    def word(self, token: str) -> str:
        """The lexicon word ``token`` is a typo of, or ``token`` itself."""
        low = token.lower()
        if len(low) < MIN_LENGTH or low in self.known:
            return token
        hit = self._memo.get(low)
        if hit is None:
            candidates = {w for key in {low} | _deletes(low) for w in self._index.get(key, ())}
            close = [w for w in candidates if _one_edit(low, w)]
            hit = max(close, key=lambda w: (self.lexicon[w], w)) if close else low
            if len(self._memo) < 100_000:
                self._memo[low] = hit
        return token if hit == low else hit

    def correct(self, text: str) -> str:
        """``text`` with each misspelt lexicon word replaced (lower case: the embedder is uncased)."""
        if not self.lexicon:
            return text
        return _WORD.sub(lambda m: self.word(m.group()), text)


def lexicon_of(texts: Iterable[str]) -> dict[str, int]:
    """Word counts of ``texts`` (lower case, letters only, at least ``MIN_LENGTH`` long)."""
    counts: dict[str, int] = {}
    for text in texts:
        for w in _WORD.findall(text.lower()):
            if len(w) >= MIN_LENGTH:
                counts[w] = counts.get(w, 0) + 1
    return counts
