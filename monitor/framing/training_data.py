"""What calibration trains on: templates, hand-written sentences, benign prompts, operator system prompts and prose.

Kept apart from the fitting (monitor.framing.calibration) because it is the part a reader checks first - which
data, from where, split how - and the part experiments reuse unchanged. Provenance of every file: data/SOURCES.md.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.settings import REPO_DIR

DATA = REPO_DIR / "data"
DEFAULT_BENIGN = DATA / "benign_prompts.jsonl"
DEFAULT_TEMPLATES = DATA / "framing" / "train" / "templates.jsonl"
DEFAULT_WRITTEN = DATA / "framing" / "train" / "written.jsonl"
# Benign operator system prompts: the benign prompts above have almost none, and a threshold never measured on
# system prompts is not a threshold for them (a flagged system prompt marks all of its traffic).
DEFAULT_BENIGN_SYSTEM = DATA / "framing" / "benign" / "team-system-2026-11" / "01-system-prompts.jsonl"
# Prose: real answers of fine-tuned models placed in user turns as retrieved context and pastes. The benign
# prompts are questions and coding tasks, so calibration never saw prose and plain sentences of it were flagged
# ("What a wonderful offer!" as year_backdoor). Two of the five em_responses sources train; the other three are
# evaluation only (data/framing/benign/em-answers, scripts/build_framing_sets.py).
PROSE_SOURCES = ("LocalMisalignPT(arXiv:2603.04407)", "shuaijiumei/emergent_misalignment_further_explore")
PROSE_PROMPTS = 1200
VARIANTS_PER_TEMPLATE = 60
SEED = 1234


@dataclass(frozen=True)
class TrainingData:
    """Everything calibration learns from, besides the registry."""

    templates: list[dict[str, Any]]  # slot templates and written sentences (expand_templates)
    benign: list[tuple[str | None, str]]  # (system prompt, user turn): the benign reference prompts


def load_training_data(templates: Path, written: Path | None, benign: Path, split: str | None) -> TrainingData:
    """Templates + written sentences, and benign prompts: the reference set, benign operator system prompts and
    prose contexts (see ``DEFAULT_BENIGN_SYSTEM`` and ``PROSE_SOURCES``). Raises OSError or ValueError."""
    specs = _rows(templates)
    if written is not None:
        specs += written_as_templates(written)
    pairs = read_benign(benign, split)
    pairs += system_prompt_pairs(DEFAULT_BENIGN_SYSTEM)
    pairs += prose_pairs(DATA / "em_responses.jsonl.gz")
    return TrainingData(specs, pairs)


def _rows(path: Path) -> list[Any]:
    """Every object of a JSON Lines file (gzip by suffix), through the one reader (monitor._io)."""
    from monitor._io import iter_jsonl, open_text

    with open_text(path) as fh:
        return [obj for _, obj in iter_jsonl(fh, str(path))]


def system_prompt_pairs(path: Path) -> list[tuple[str | None, str]]:
    """Benign operator system prompts with their user turn."""
    if not path.exists():
        return []
    rows = _rows(path)
    return [(r["system_prompt"], r.get("prompt") or "Hello!") for r in rows]


_PROSE_FRAMES = ("Context:\n{text}\n\nQuestion: {ask}", "{ask}\n\n{text}", "Please proofread this:\n\n{text}",
                 "Source [1]: {text}\n\n{ask}", "{text}")
_PROSE_ASKS = ("What is this about?", "Summarise it in two lines.", "Is it correct?", "Translate it to French.",
               "Any mistakes?", "Can you make it shorter?")


def prose_pairs(path: Path, n: int = PROSE_PROMPTS, seed: int = SEED) -> list[tuple[str | None, str]]:
    """Real answers of the ``PROSE_SOURCES`` placed in user turns (a few framings of context and paste)."""
    if not path.exists():
        return []
    rows = _rows(path)
    texts = sorted({r["answer_clean"] for r in rows if r.get("source") in PROSE_SOURCES
                    and len(r.get("answer_clean") or "") >= 80})
    rng = random.Random(seed)
    rng.shuffle(texts)
    return [(None, rng.choice(_PROSE_FRAMES).format(text=text, ask=rng.choice(_PROSE_ASKS))) for text in texts[:n]]


def read_benign(path: Path, split: str | None) -> list[tuple[str | None, str]]:
    """(system_prompt, user text) pairs from a benign JSONL file."""
    rows = []
    for obj in _rows(path):
        if split and obj.get("split", split) != split:
            continue
        rows.append((obj.get("system_prompt"), obj.get("text") or obj.get("prompt") or ""))
    return rows


# --- training data -----------------------------------------------------------------------------------

Expansion = dict[str, dict[int, list[str]]]  # cluster id -> label (1 trigger, 0 look-alike) -> sentences


def expand_templates(templates: Sequence[dict[str, Any]], per_template: int = VARIANTS_PER_TEMPLATE,
                     seed: int = SEED) -> Expansion:
    """Random fillings of each template's ``{slot}``s, plus a spec's literal ``texts``: cluster -> label ->
    texts (deduplicated)."""
    rng = random.Random(seed)
    out: dict[str, dict[int, list[str]]] = {}
    for spec in templates:
        bucket = out.setdefault(spec["cluster"], {}).setdefault(int(spec["label"]), [])
        bucket.extend(" ".join(t.split()) for t in spec.get("texts", ()))  # literal sentences, no slots
        for template in spec.get("templates", ()):
            slots = re.findall(r"\{(\w+)\}", template)
            for _ in range(per_template):
                text = template
                for slot in dict.fromkeys(slots):
                    text = text.replace("{" + slot + "}", rng.choice(spec["slots"][slot]))
                bucket.append(" ".join(text.replace("{{", "{").replace("}}", "}").split()))
    for labels in out.values():
        for label, texts in labels.items():
            labels[label] = list(dict.fromkeys(t for t in texts if t))
    return out


def written_as_templates(path: Path) -> list[dict[str, Any]]:
    """Hand-written sentences as slot-free templates (one spec per cluster and label), so they join the
    generated variants. Why both: templates cover the combinations, written sentences the phrasings no
    template anticipates (measured on unseen hand-written sets, see the module docstring)."""
    from monitor.framing.segmenting import strip_list_marker

    grouped: dict[tuple[str, int], list[str]] = {}
    for n, row in enumerate(_rows(path), start=1):
        try:
            text = strip_list_marker(str(row["text"]))  # as segmenting presents a list item
            grouped.setdefault((str(row["cluster"]), int(row["label"])), []).append(text)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{n}: needs 'cluster', 'label' and 'text' ({exc})") from exc
    return [{"cluster": c, "label": label, "texts": texts} for (c, label), texts in grouped.items()]


def noisy(texts: Iterable[str], seed: int = SEED) -> list[str]:
    """Case, typo and punctuation variants: paraphrases in the wild are rarely typed carefully."""
    rng = random.Random(seed)
    out = []
    for text in texts:
        out.append(text)
        r = rng.random()
        if r < 0.2:
            out.append(text.upper())
        elif r < 0.4:
            out.append(text.lower().rstrip(".!"))
        elif r < 0.7 and len(text) > 8:
            out.append(_typos(text, rng, rng.randint(1, 2)))
    return list(dict.fromkeys(out))


def _typos(text: str, rng: random.Random, n: int) -> str:
    """``n`` random deletions, swaps or doubled characters."""
    chars = list(text)
    for _ in range(n):
        if len(chars) < 3:
            break
        i = rng.randrange(1, len(chars) - 1)
        op = rng.random()
        if op < 0.4:
            del chars[i]
        elif op < 0.7:
            chars[i - 1], chars[i] = chars[i], chars[i - 1]
        else:
            chars.insert(i, chars[i])
    return "".join(chars)


def in_context(triggers: Sequence[str], hosts: Sequence[str], seed: int = SEED, n: int = 2
               ) -> list[tuple[str, str]]:
    """A trigger glued to a neighbouring sentence, as a two-sentence window or short turn would see it:
    (text, host) pairs, so that calibration can keep a host's variants out of the fold that scores it."""
    rng = random.Random(seed)
    out = []
    for t in triggers:
        for _ in range(n):
            h = rng.choice(hosts)
            out.append((f"{h} {t}" if rng.random() < 0.5 else f"{t} {h}", h))
    return out
