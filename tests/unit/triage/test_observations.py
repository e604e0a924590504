"""Emerging-framing sentences of a long turn come from its edges only, and are the same as splitting it whole."""

from __future__ import annotations

from monitor.framing import segmenting
from monitor.sidecar.events import Prompt
from monitor.triage.observations import EDGE_SENTENCES, MIN_SEGMENT_CHARS, sentences


def test_long_turn_gives_the_same_edge_sentences_as_the_whole_split() -> None:
    body = " ".join(f"Retrieved sentence number {i} says something about topic {i % 7} in detail." for i in range(400))
    turn = f"Answer in one word, please. {body} That is all I need to know, thanks."
    whole = [s for s in segmenting.sentences(turn, 300) if len(s) >= MIN_SEGMENT_CHARS]
    expected = list(dict.fromkeys(whole[:EDGE_SENTENCES] + whole[-EDGE_SENTENCES:]))
    assert sentences(Prompt(system=None, user=(turn,))) == expected
    assert expected[0] == "Answer in one word, please." and expected[-1] == "That is all I need to know, thanks."


def test_short_turn_is_split_whole() -> None:
    turn = "First sentence here. Second one follows. Third is last."
    assert sentences(Prompt(system=None, user=(turn,))) == ["First sentence here.", "Second one follows.",
                                                           "Third is last."]
