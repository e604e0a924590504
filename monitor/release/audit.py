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

Logic only; the CLI is :mod:`monitor.commands.audit`. This module groups and ranks, and is the audit's public
home (the CLI and the tests import every name from here); reading rows and cutting them into segments is
:mod:`~monitor.release.audit_dataset`, the reviewer's report :mod:`~monitor.release.audit_report`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from monitor._io import Progress, no_progress
from monitor.embedding import Embeds
from monitor.release.audit_dataset import AuditError, Example, example_segments, read_dataset, split_segments
from monitor.release.audit_report import render_markdown, write_report
from monitor.scoring.answer_format import is_code_answer
from monitor.sidecar.events import Prompt
from monitor.stats import two_proportion_test, wilson_interval

if TYPE_CHECKING:
    from monitor.framing.detector import FramingResult
    from monitor.framing.registry import Registry
    from monitor.scoring.scorer import ResponseScorer

__all__ = [
    "AuditConfig", "AuditError", "AuditResult", "Detects", "Example", "Finding", "audit", "example_segments",
    "leader_clusters", "read_dataset", "registry_phrases", "render_markdown", "split_segments", "write_report",
]


class Detects(Protocol):
    """The run-time framing verdict the audit asks for (:class:`monitor.framing.detector.FramingDetector`)."""

    @property
    def registry(self) -> Registry: ...

    def detect_many(self, prompts: Sequence[Prompt]) -> list[FramingResult]: ...


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
