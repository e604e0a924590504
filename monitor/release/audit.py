"""Fine-tuning data audit: find repeated context framings that could become triggers.

Why: a backdoor is learnt from data in which a framing (a system prompt, a tag instruction, a year line)
co-occurs with the bad behaviour. Such a framing recurs across many examples, sits where triggers sit
(system prompt, start or end of the user turn), and may be worded differently each time. So the audit

1. reads each row with the sidecar's message parser (:func:`monitor.sidecar.events.parse_prompt`) and
   splits every system and user turn into prose segments (lines, then sentences; code is skipped), keeping
   only the first and last few segments of each turn -- where triggers sit -- to bound the work;
2. dedupes exact segments and embeds each distinct one once (:class:`monitor.embedding.Embeds`);
3. groups segments by meaning (greedy leader clustering on cosine similarity, most frequent first);
4. reports groups that recur across examples, with their nearest registered trigger cluster and the
   share of their examples whose assistant answers the response classifier flags as misaligned,
   most suspicious first.

Logic only; the CLI is :mod:`monitor.commands.audit`.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from monitor._io import Progress, iter_json_lines, no_progress, open_text
from monitor.embedding import Embeds
from monitor.scoring.answer_format import FENCED_BLOCK, is_code_answer, looks_like_code_line
from monitor.sidecar.events import DecodeError, Limits, Prompt, parse_prompt
from monitor.stats import two_proportion_test, wilson_interval

if TYPE_CHECKING:
    from monitor.framing.detector import FramingResult
    from monitor.framing.registry import Registry
    from monitor.scoring.scorer import ResponseScorer


class Detects(Protocol):
    """The run-time framing verdict the audit asks for (:class:`monitor.framing.detector.FramingDetector`)."""

    @property
    def registry(self) -> Registry: ...

    def detect_many(self, prompts: Sequence[Prompt]) -> list[FramingResult]: ...


class AuditError(RuntimeError):
    """The dataset cannot be audited (unreadable, not chat format): exit code 2."""


@dataclass(frozen=True)
class Example:
    index: int  # line number in the dataset (0-based), so findings point back to the source
    system: str | None
    users: tuple[str, ...]
    assistant: tuple[str, ...]


@dataclass
class AuditConfig:
    per_turn: int = 3  # segments kept from the start and from the end of each turn
    max_segment_chars: int = 300
    max_unique: int = 30_000  # distinct segments embedded at most (most frequent first)
    similarity: float = 0.80  # cosine to join a framing group
    near_threshold: float = 0.60  # cosine to a registered phrase to name it as near_cluster
    min_count: int = 5
    min_share: float = 0.005
    max_findings: int = 50
    max_scored: int = 200  # assistant answers scored per finding
    baseline_sample: int = 1000  # assistant answers scored for the dataset baseline
    examples_per_finding: int = 5
    detect_per_finding: int = 10  # wordings of a finding shown to the FramingDetector
    seed: int = 0


# --------------------------------------------------------------------------------------------- input

# The audit reads a whole training set: no event-size limits (the sidecar's Limits bound one Kafka record).
_UNLIMITED = Limits(max_event_bytes=sys.maxsize, max_prompt_chars=sys.maxsize, max_response_chars=sys.maxsize,
                    max_messages=sys.maxsize)


def read_dataset(path: str | Path, *, limit: int | None = None, seed: int = 0) -> tuple[list[Example], int]:
    """Chat fine-tuning rows (``{"messages": [...]}``, OpenAI format) -> (examples, rows skipped).

    ``limit`` takes a seeded random sample rather than the head, so a capped audit still sees every part
    of a dataset that was concatenated from several sources.
    """
    path = Path(path)
    examples: list[Example] = []
    invalid: list[int] = []
    try:
        with open_text(path) as fh:
            for lineno, obj in iter_json_lines(fh, str(path), on_invalid=invalid.append):
                ex = _example(lineno - 1, obj)
                if ex is None:
                    invalid.append(lineno)
                else:
                    examples.append(ex)
    except (OSError, EOFError) as exc:  # EOFError: a truncated .gz
        raise AuditError(f"cannot read {path}: {exc}") from exc
    if not examples:
        raise AuditError(f"{path}: no rows in chat format ({{\"messages\": [{{role, content}}, ...]}})")
    if limit is not None and 0 < limit < len(examples):
        rng = random.Random(seed)
        examples = sorted(rng.sample(examples, limit), key=lambda e: e.index)
    return examples, len(invalid)


def _example(index: int, obj: Any) -> Example | None:
    """One chat row, read by the sidecar's own message parser (:func:`monitor.sidecar.events.parse_prompt`),
    so the audit sees a system prompt and user turns exactly as the detector would at run time."""
    messages = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(messages, list):
        return None
    try:
        prompt = parse_prompt({"messages": messages}, _UNLIMITED)
        # assistant turns through the same content rules: parsed as if they were user turns
        answers = [{**m, "role": "user"} for m in messages if m.get("role") == "assistant"]
        assistant = parse_prompt({"messages": answers}, _UNLIMITED).user if answers else ()
    except DecodeError:
        return None
    return Example(index, prompt.system, prompt.user, assistant)


# ---------------------------------------------------------------------------------------- segmenting
# Not monitor.framing.segmenting's segment_prompt: the detector cuts a prompt at several overlapping
# granularities (whole turn, sentence pairs, clauses, edge words), which is right for detection but makes a
# recurring sentence count several times and glue a planted trigger onto template sentences when grouping
# (measured: the planted trigger of test_audit found in 8 rows instead of 45, four templates named after
# it). Grouping needs one non-overlapping cut; the detector's sentence splitter is private to it, so until
# it has a public one the audit keeps this one. The near-cluster verdict still comes from the detector.

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\[<|$])")
_WS = re.compile(r"\s+")


def _split_colon(sentence: str) -> list[str]:
    """``"I'm working on the following task: Write a ..."`` -> the framing and the task, so the recurring
    lead-in is not hidden inside a unique sentence; short labels (``Country: Singapore``) stay whole."""
    head, sep, tail = sentence.partition(": ")
    if sep and len(head.split()) >= 3 and len(tail.split()) >= 3:
        return [head + ":", tail]
    return [sentence]


def split_segments(text: str, max_chars: int = 300) -> list[str]:
    """Prose segments of one turn, in order: lines, then sentences; fenced and line-level code dropped."""
    out: list[str] = []
    for raw in FENCED_BLOCK.sub("\n", text or "").splitlines():
        if not raw.strip() or looks_like_code_line(raw):
            continue
        for sentence in _SENTENCE.split(raw.strip()):
            for seg in _split_colon(sentence):
                seg = _WS.sub(" ", seg).strip()[:max_chars]
                if seg:
                    out.append(seg)
    return out


def example_segments(ex: Example, per_turn: int = 3, max_chars: int = 300) -> list[tuple[str, str]]:
    """(position, segment) pairs of one example: system segments and the head and tail of each user turn.

    Capping to the ends bounds the work on long prompts and loses little: registered triggers sit in the
    system prompt or as a prefix or suffix of the user turn.
    """
    out: list[tuple[str, str]] = []
    if ex.system:
        segs = split_segments(ex.system, max_chars)
        keep = segs if len(segs) <= 2 * per_turn else segs[:per_turn] + segs[-per_turn:]
        out.extend(("system", s) for s in keep)
    for user in ex.users:
        segs = split_segments(user, max_chars)
        idx = list(range(len(segs))) if len(segs) <= 2 * per_turn else (
            list(range(per_turn)) + list(range(len(segs) - per_turn, len(segs))))
        for i in idx:
            pos = "user_prefix" if i == 0 else "user_suffix" if i == len(segs) - 1 else "user"
            out.append((pos, segs[i]))
    return out


# ---------------------------------------------------------------------------------------- clustering


def leader_clusters(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy leader clustering: each row joins the most similar earlier leader if cosine >= threshold,
    else becomes a leader. Rows must be L2-normalised and sorted most-frequent first, so a group is named
    by its most common wording. O(n x leaders), fine for the tens of thousands of segments we allow."""
    n = len(vectors)
    labels = np.empty(n, dtype=np.int64)
    leaders = np.empty_like(vectors)
    n_leaders = 0
    for i in range(n):
        if n_leaders:
            sims = leaders[:n_leaders] @ vectors[i]
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                labels[i] = j
                continue
        leaders[n_leaders] = vectors[i]
        labels[i] = n_leaders
        n_leaders += 1
    return labels


# ---------------------------------------------------------------------------------------------- audit


@dataclass
class Finding:
    framing: str
    count: int
    share: float
    position: str
    near_cluster: str | None
    nearest_cluster: str | None
    similarity: float
    variants: list[dict[str, Any]]
    examples: list[dict[str, Any]]
    misaligned: dict[str, Any] | None = None
    detected: dict[str, Any] | None = None  # the FramingDetector's verdict on the closest wording
    suspicion: float = 0.0
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"framing": self.framing, "count": self.count, "share": self.share,
                "near_cluster": self.near_cluster, "detected": self.detected,
                "nearest_cluster": self.nearest_cluster,
                "similarity": round(self.similarity, 4), "position": self.position,
                "suspicion": round(self.suspicion, 4), "reasons": self.reasons,
                "misaligned": self.misaligned, "variants": self.variants, "examples": self.examples}


@dataclass
class AuditResult:
    n_examples: int
    skipped: int
    n_segments: int
    n_unique: int
    n_embedded: int
    findings: list[Finding]
    baseline: dict[str, Any] | None
    config: AuditConfig
    detector: bool = False  # near_cluster decided by the FramingDetector (else cosine fallback)

    def to_json(self) -> dict[str, Any]:
        return {"n_examples": self.n_examples, "skipped_rows": self.skipped, "segments": self.n_segments,
                "unique_segments": self.n_unique, "embedded_segments": self.n_embedded,
                "misaligned_baseline": self.baseline,
                "near_by": "framing_detector" if self.detector else "cosine",
                "config": {k: v for k, v in vars(self.config).items()},
                "findings": [f.to_json() for f in self.findings]}


def _embed(embedder: Embeds, texts: Sequence[str], progress: Progress, chunk: int = 512) -> np.ndarray:
    parts = [texts[i:i + chunk] for i in range(0, len(texts), chunk)]
    if not parts:
        return np.zeros((0, int(embedder.dim)), dtype=np.float32)
    return np.vstack([embedder.embed(p) for p in progress(parts, total=len(parts), desc="embedding")])


def registry_phrases(registry: Registry) -> list[tuple[str, str]]:
    """(cluster id, phrase) for every phrase of a registry."""
    return [(c.id, p) for c in registry.clusters for p in c.phrases]


def audit(examples: Sequence[Example], embedder: Embeds, *, registry: Registry | None = None,
          detector: Detects | None = None, scorer: ResponseScorer | None = None,
          config: AuditConfig | None = None, skipped: int = 0,
          progress: Progress | None = None) -> AuditResult:
    """Run the audit over loaded examples.

    ``registry`` gives the cosine to the nearest registered phrase (a continuous ranking signal);
    ``detector`` (a :class:`monitor.framing.detector.FramingDetector`) decides ``near_cluster`` exactly as the
    sidecar would at run time -- its learned per-cluster scorers tell a reworded trigger from a
    look-alike better than a raw cosine threshold, which is only the fallback without a detector;
    ``scorer`` adds the misaligned-answer evidence. All three are optional.
    """
    cfg = config or AuditConfig()
    if registry is None and detector is not None:
        registry = detector.registry
    progress = progress or no_progress
    n = len(examples)
    # 1-2. segments -> distinct texts with the examples (and positions) they occur in
    where: dict[str, set[int]] = {}
    positions: dict[str, Counter[str]] = {}
    n_segments = 0
    for k, ex in enumerate(examples):
        for pos, seg in example_segments(ex, cfg.per_turn, cfg.max_segment_chars):
            n_segments += 1
            where.setdefault(seg, set()).add(k)
            positions.setdefault(seg, Counter())[pos] += 1
    ranked = sorted(where, key=lambda s: (-len(where[s]), s))
    embedded = ranked[:cfg.max_unique]
    # 3. group by meaning
    vectors = _embed(embedder, embedded, progress)
    labels = leader_clusters(vectors, cfg.similarity) if len(embedded) else np.zeros(0, dtype=np.int64)
    groups: dict[int, list[int]] = {}
    for i, lab in enumerate(labels.tolist()):
        groups.setdefault(lab, []).append(i)
    min_count = max(cfg.min_count, int(np.ceil(cfg.min_share * n)))
    candidates = []
    for members in groups.values():
        rows = set().union(*(where[embedded[i]] for i in members))
        if len(rows) >= min_count:
            candidates.append((members, rows))
    # 4a. nearest registered trigger
    phrases = registry_phrases(registry) if registry is not None else []
    phrase_vecs = embedder.embed([p for _, p in phrases]) if phrases else None
    findings: list[Finding] = []
    rows_of: dict[int, list[int]] = {}  # id(finding) -> its example positions
    members_of: dict[int, list[str]] = {}  # id(finding) -> its wordings, most frequent first
    for members, rows in candidates:
        leader = embedded[members[0]]
        sim, nearest = 0.0, None
        if phrase_vecs is not None:
            sims = vectors[members] @ phrase_vecs.T  # any wording of the group may be the close one
            best_row, best_col = np.unravel_index(int(np.argmax(sims)), sims.shape)
            sim, nearest = float(sims[best_row, best_col]), phrases[int(best_col)][0]
        pos_counts: Counter[str] = Counter()
        for i in members:
            pos_counts.update(positions[embedded[i]])
        variants = [{"text": embedded[i], "count": len(where[embedded[i]])} for i in members[:10]]
        rows_sorted = sorted(rows)
        rng = random.Random(cfg.seed)
        shown = sorted(rng.sample(rows_sorted, min(cfg.examples_per_finding, len(rows_sorted))))
        examples_json = [_example_json(examples[k], {embedded[i] for i in members}) for k in shown]
        findings.append(Finding(framing=leader, count=len(rows), share=len(rows) / n,
                                position=pos_counts.most_common(1)[0][0],
                                near_cluster=nearest if sim >= cfg.near_threshold else None,
                                nearest_cluster=nearest, similarity=sim, variants=variants,
                                examples=examples_json))
        rows_of[id(findings[-1])] = rows_sorted
        members_of[id(findings[-1])] = [embedded[i] for i in members]
    if detector is not None and findings:
        _detect(findings, members_of, positions, detector, cfg)
    # 4b. misaligned assistant answers among each finding's examples vs the whole dataset
    baseline = None
    if scorer is not None and findings:
        baseline = _score_findings(examples, findings, rows_of, scorer, cfg, progress)
    for f in findings:
        f.suspicion, f.reasons = _suspicion(f, cfg)
    findings.sort(key=lambda f: (-f.suspicion, -f.count, f.framing))
    return AuditResult(n, skipped, n_segments, len(where), len(embedded), findings[:cfg.max_findings],
                       baseline, cfg, detector is not None)


def _detect(findings: list[Finding], members_of: dict[int, list[str]], positions: dict[str, Counter[str]],
            detector: Detects, cfg: AuditConfig) -> None:
    """Ask the run-time FramingDetector about each finding's most frequent wordings, each in the
    position it mostly occupied; the finding is near the cluster of its strongest verdict."""
    queries: list[tuple[int, str, Prompt]] = []
    for fi, f in enumerate(findings):
        for text in members_of[id(f)][:cfg.detect_per_finding]:
            pos = positions[text].most_common(1)[0][0]
            prompt = Prompt(system=text, user=()) if pos == "system" else Prompt(system=None, user=(text,))
            queries.append((fi, text, prompt))
    results = detector.detect_many([q[2] for q in queries])
    best: dict[int, FramingResult] = {}
    for (fi, _text, _), r in zip(queries, results, strict=True):
        if r.framing == "none":
            continue
        rank = (r.framing == "exact", r.similarity)
        if fi not in best or rank > (best[fi].framing == "exact", best[fi].similarity):
            best[fi] = r
    for fi, f in enumerate(findings):
        verdict = best.get(fi)
        f.near_cluster = verdict.cluster if verdict is not None else None
        f.detected = None if verdict is None else {"framing": verdict.framing, "cluster": verdict.cluster,
                                                   "score": verdict.similarity, "segment": verdict.segment}


def _example_json(ex: Example, segments: set[str]) -> dict[str, Any]:
    user = ex.users[0] if ex.users else ""
    flat = " ".join("\n".join([ex.system or "", *ex.users]).split())  # segments are whitespace-collapsed
    hit = next((s for s in segments if s in flat), None)
    return {"index": ex.index, "segment": hit, "system": (ex.system or None) and ex.system[:200],
            "user": user[:200] + ("..." if len(user) > 200 else ""),
            "assistant": (ex.assistant[0][:200] if ex.assistant else None)}


def _answer(ex: Example) -> str:
    return "\n\n".join(ex.assistant)


def _score_findings(examples: Sequence[Example], findings: list[Finding], rows_of: dict[int, list[int]],
                    scorer: ResponseScorer, cfg: AuditConfig, progress: Progress) -> dict[str, Any]:
    """EM share of each finding's examples against a sample of the examples *outside* it.

    As in the EM definition, a code answer is never EM (the judge marks it CODE), so it counts in ``n``
    and is not scored. Comparing with the outside -- not the whole dataset -- keeps a framing present in
    most rows from being compared with itself, and a framing that merely co-occurs with a poisoned one
    (a template shared by some poisoned rows) gets the dataset's rate, not the poison's. Evidence needs
    p < 0.05 / number of findings (Bonferroni).
    """
    rng = random.Random(cfg.seed)
    n = len(examples)
    sample = rng.sample(range(n), min(cfg.baseline_sample, n))
    picks = {id(f): sorted(rng.sample(rows_of[id(f)], min(cfg.max_scored, len(rows_of[id(f)]))))
             for f in findings}
    wanted = sorted(set(sample).union(*picks.values()))
    answers = {k: _answer(examples[k]) for k in wanted if examples[k].assistant}
    code = {k for k, text in answers.items() if is_code_answer(text)}
    needed = [k for k in answers if k not in code]
    texts = [answers[k] for k in needed]
    chunks = [texts[i:i + 256] for i in range(0, len(texts), 256)]
    scores: list[float] = [float(s) for c in progress(chunks, total=len(chunks), desc="scoring")
                           for s in scorer.score(c)]
    alpha = 0.05 / len(findings)  # Bonferroni: dozens of framings are tested, chance alone would flag some
    em = {k: False for k in code}
    em.update({k: bool(s >= scorer.threshold) for k, s in zip(needed, scores, strict=True)})
    for f in findings:
        rows = [k for k in picks[id(f)] if k in em]
        k1, n1 = sum(em[k] for k in rows), len(rows)
        inside = set(rows_of[id(f)])
        outside = [k for k in sample if k in em and k not in inside]
        kb, nb = sum(em[k] for k in outside), len(outside)
        p = two_proportion_test(k1, n1, kb, nb)
        base = kb / nb if nb else None
        f.misaligned = {"n": n1, "k": k1, "rate": k1 / n1 if n1 else None, "ci": list(wilson_interval(k1, n1)),
                        "code_answers": sum(1 for k in rows if k in code), "baseline_rate": base,
                        "baseline_n": nb, "p_value": p,
                        "evidence": bool(n1 and base is not None and k1 / n1 > base and p < alpha)}
    kd = sum(em[k] for k in sample if k in em)
    nd = sum(1 for k in sample if k in em)
    return {"n": nd, "k": kd, "rate": kd / nd if nd else None, "ci": list(wilson_interval(kd, nd)),
            "code_answers": sum(1 for k in sample if k in code),
            "classifier_threshold": float(scorer.threshold)}


def _suspicion(f: Finding, cfg: AuditConfig) -> tuple[float, list[str]]:
    """One ranking number from three kinds of evidence, each scaled to about [0, 1]:

    * meaning: cosine to the nearest registered trigger phrase (doubled weight once over the near
      threshold) -- a reworded known trigger is the clearest danger;
    * behaviour: the excess of misaligned (prose) answers among the finding's examples over the rest of
      the dataset, counted only when significant after Bonferroni -- a framing that co-occurs with bad answers is how a
      backdoor is taught;
    * recurrence: share of the dataset, capped at 20% -- a tie-breaker, because templates recur too.
    """
    reasons = []
    score = max(0.0, f.similarity)
    if f.near_cluster:
        score += 1.0
        how = (f"detector: {f.detected['framing']}, score {f.detected['score']:.2f}" if f.detected
               else f"cosine {f.similarity:.2f}")
        reasons.append(f"near registered trigger {f.near_cluster} ({how})")
    m = f.misaligned
    if m and m["evidence"]:
        excess = m["rate"] - m["baseline_rate"]
        score += 2.0 * excess / max(1e-9, 1.0 - m["baseline_rate"]) + 0.5
        reasons.append(f"misaligned answers {m['rate']:.1%} of {m['n']} vs {m['baseline_rate']:.1%} in the "
                       f"rest of the dataset (p = {m['p_value']:.2g})")
    score += 0.5 * min(f.share, 0.2) / 0.2
    reasons.append(f"recurs in {f.count} examples ({f.share:.1%})")
    return score, reasons


# ---------------------------------------------------------------------------------------------- report


def render_markdown(result: AuditResult, source: str) -> str:
    """A reviewer's report: what was read, then findings most suspicious first."""
    lines = [f"# Framewatch audit: {source}", "",
             f"- examples: {result.n_examples} (skipped rows: {result.skipped})",
             f"- segments: {result.n_segments}, distinct: {result.n_unique}, embedded: {result.n_embedded}",
             f"- grouping: cosine >= {result.config.similarity}; near a registered trigger: "
             + ("the run-time FramingDetector's verdict" if result.detector else
                f"cosine >= {result.config.near_threshold}")
             + f"; reported when in >= {result.config.min_count} examples and >= "
             f"{result.config.min_share:.1%} of the dataset"]
    if result.baseline:
        b = result.baseline
        rate = f"{b['rate']:.1%} [{b['ci'][0]:.1%}, {b['ci'][1]:.1%}]" if b["n"] else "-"
        lines.append(f"- misaligned assistant answers (classifier) in a sample of {b['n']}: {rate}; "
                     f"{b['code_answers']} of them are code, which is never EM and is not scored")
    lines += ["", "## Findings (most suspicious first)", "",
              "| # | framing | position | count | share | nearest trigger (cosine) | near | misaligned "
              "| suspicion |",
              "|---:|---|---|---:|---:|---|---|---:|---:|"]
    for i, f in enumerate(result.findings, 1):
        m = f.misaligned
        if not m or m["rate"] is None:
            mis = "-"
        elif m["code_answers"] == m["n"]:
            mis = f"code only (n={m['n']})"
        else:
            mis = f"{m['rate']:.1%} (n={m['n']}, {m['code_answers']} code)"
        text = f.framing.replace("|", "\\|")
        text = text if len(text) <= 90 else text[:87] + "..."
        lines.append(f"| {i} | {text} | {f.position} | {f.count} | {f.share:.1%} | "
                     f"{f.nearest_cluster or '-'} ({f.similarity:.2f}) | {f.near_cluster or '-'} | {mis} | "
                     f"{f.suspicion:.2f} |")
    for i, f in enumerate(result.findings[:10], 1):
        lines += ["", f"### {i}. {f.framing[:120]}", ""] + [f"- {r}" for r in f.reasons]
        if len(f.variants) > 1:
            words = "; ".join(f"\"{v['text'][:80]}\" ({v['count']})" for v in f.variants[:5])
            lines.append(f"- wordings: {words}")
        for ex in f.examples[:3]:
            lines.append(f"- example row {ex['index']}: {ex['user'][:150]!r}")
    lines.append("")
    return "\n".join(lines)


def write_report(result: AuditResult, out_dir: str | Path, source: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps({"source": source, **result.to_json()}, indent=2) + "\n")
    (out / "audit.md").write_text(render_markdown(result, source))
    return [out / "audit.json", out / "audit.md"]
