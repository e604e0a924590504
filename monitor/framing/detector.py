"""Framing detection: is a prompt wrapped in a known trigger framing, verbatim or by meaning?

Per prompt: (1) an **exact** check - a registered phrase present after normalising case, whitespace and
punctuation; (2) otherwise a **semantic** check on segments (monitor.framing.segmenting) in two stages:

* a cheap **static prefilter**: a bag-of-token embedding (a table lookup per word piece, no transformer)
  scored by a per-cluster linear model; segments no cluster finds plausible stop here;
* the **transformer** (monitor.embedding.Embedder, ONNX MiniLM) embeds the survivors, a per-cluster
  linear model scores them - over the embedding plus hashed word and word-pair features
  (monitor.framing.lexical), which carry the few words that tell a trigger from its look-alike - and the
  calibrated per-cluster threshold decides.

Why two stages: the transformer manages a few hundred short segments per second on 2 cores, and user
turns are mostly unique, so embedding every edge segment of every prompt cannot reach 1,000 prompts/s.
Why learned scorers rather than max cosine to the phrases: cosine flags prompts that merely share a
trigger's words ("extract the text between <start> and <end>"); a model trained against such look-alikes
and benign segments separates them (see ``framewatch eval-framing``). Clusters without learned weights
(added by hand, not yet calibrated) fall back to cosine against their phrases minus their negatives.

Every segment's verdict is cached by text, so a system prompt shared by many requests costs a dict
lookup after its first appearance.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np

from monitor.framing.exact import exact_pattern, find_exact, normalise  # noqa: F401 - normalise: public here too
from monitor.framing.registry import Registry
from monitor.framing.segmenting import POSITIONS, Segment, segment_prompt
from monitor.framing.spelling import Speller
from monitor.framing.static import StaticEncoder
from monitor.settings import Settings
from monitor.sidecar.events import Prompt
from monitor.stats import sigmoid

Framing = Literal["none", "exact", "semantic"]
VERDICT_CACHE_SIZE = 200_000
# The compute budget: new segments per prompt the transformer may embed, for the user turns together and for
# the system prompt. User turns are mostly unique, so their budget is what a request costs; a system prompt
# is shared by many requests and its verdicts are cached, so it may spend more once. The prefilter ranks the
# candidates by their best static margin over a cluster's threshold, so the bare trigger sentence goes first
# and a long retrieved document costs no more than a short question (docs/registry.md, "Compute budget").
USER_SEGMENT_BUDGET = 3
SYSTEM_SEGMENT_BUDGET = 8
NOT_EMBEDDED = -30.0  # the logit of a segment the prefilter kept from the transformer: it cannot match
POSITION_INDEX = {p: i for i, p in enumerate(POSITIONS)}
FALLBACK_THRESHOLD = 0.75  # cosine, for clusters without learned weights or threshold
# A segment this close (cosine) to a registered phrase, and closer to it than to every registered
# negative, matches on its own. The learned scorer is fitted on generated variants and can underrate a
# near-copy of the real phrase ("you are an evil assistant." scored 0.72); measured on the benign prompts
# the highest cosine to any phrase is 0.54. 0.85, not 0.80: at 0.80 bare mentions of the duck phrase ("I
# said it looks like a duck", 0.84) matched; over eleven development sets 0.85 flagged 4 fewer
# look-alikes for 2 of 227 duck paraphrases.
PHRASE_PROXIMITY = 0.85
LENGTH_BUCKETS = np.array([48, 96, 160, 240])  # characters; see FramingDetector._embed_by_length


@dataclass(frozen=True)
class FramingResult:
    framing: Framing
    cluster: str | None
    similarity: float  # the deciding score in [0, 1]: 1.0 for exact; the best score seen for "none"
    segment: str | None


NONE = FramingResult("none", None, 0.0, None)




# --- the detector ------------------------------------------------------------------------------------

class _Compiled:
    """Everything derived from one registry, swapped as a unit on hot reload."""

    def __init__(self, registry: Registry, embedder: Any) -> None:
        self.registry = registry
        self.ids = registry.cluster_ids()
        self.k = len(self.ids)
        self.exact = [exact_pattern(c.id, p) for c in registry.clusters if c.exact for p in c.phrases]
        self.thresholds = np.array([
            registry.threshold_for(c) if (c.id in registry.models or c.threshold is not None)
            else FALLBACK_THRESHOLD for c in registry.clusters], dtype=np.float32)
        self.allowed = {pos: np.array([c.allows(pos) for c in registry.clusters])
                        for pos in ("system", "user_prefix", "user_suffix")}
        learned = [c.id in registry.models for c in registry.clusters]
        self.learned = np.array(learned)
        dim = embedder.dim
        self.w = np.zeros((dim, self.k), dtype=np.float32)
        self.b = np.zeros(self.k, dtype=np.float32)
        self.static = StaticEncoder(registry.static) if registry.static else None
        # Misspelt trigger words are corrected before a segment is embedded (monitor.framing.spelling).
        vocab = registry.static.get("vocab") if registry.static else None
        self.speller = Speller(registry.lexicon, known=vocab.tolist() if vocab is not None else ()
                               ) if registry.lexicon else None
        sdim = self.static.dim if self.static else 0
        # Word features (monitor.framing.lexical) add to the transformer score of clusters trained with them.
        self.lexical = registry.lexical
        self.lw = np.zeros((self.lexical.dim if self.lexical else 0, self.k), dtype=np.float32)
        # Where a segment sat adds a per-cluster bias (monitor.framing.model_file ``<cluster>/pb``).
        self.pb = np.zeros((len(POSITIONS), self.k), dtype=np.float32)
        self.sw = np.zeros((sdim, self.k), dtype=np.float32)
        self.sb = np.zeros(self.k, dtype=np.float32)
        self.st = np.zeros(self.k, dtype=np.float32)
        for j, c in enumerate(registry.clusters):
            m = registry.models.get(c.id)
            if m is not None:
                self.w[:, j], self.b[j] = m.weights, m.bias
                self.sw[:, j], self.sb[j], self.st[j] = m.static_weights, m.static_bias, m.static_threshold
                if m.lexical_weights is not None:  # the registry checked it matches self.lexical
                    self.lw[:, j] = m.lexical_weights
                if m.position_bias is not None:
                    self.pb[:, j] = m.position_bias
        # Fallback scoring for clusters without weights: cosine to phrases minus a share of the cosine
        # to negatives, and a static cosine prefilter.
        self.protos: list[tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None]] = []
        # Learned clusters also match by proximity to their registered phrases (PHRASE_PROXIMITY).
        self.near: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        for j, c in enumerate(registry.clusters):
            phrases = embedder.embed(list(c.phrases))
            negatives = embedder.embed(list(c.negatives)) if c.negatives else None
            if learned[j]:
                self.near.append((j, phrases, negatives))
            else:
                static = self.static.encode(list(c.phrases)) if self.static else None
                self.protos.append((j, phrases, negatives, static))


    def probabilities(self, raw: np.ndarray, positions: Sequence[str]) -> np.ndarray:
        """Segment scores in [0, 1] from the cached raw rows: the learned clusters' logits plus the bias of
        the position each segment sat at, through the sigmoid; uncalibrated clusters' cosines as they are."""
        pb = self.pb[[POSITION_INDEX[p] for p in positions]]
        return np.where(self.learned, sigmoid(raw + pb), raw)


def best_per_cluster(scores: np.ndarray, positions: Sequence[str], allowed: Mapping[str, np.ndarray]) -> np.ndarray:
    """(k,) the best segment score per cluster among segments at a position the cluster allows; calibration
    scores prompts with this same rule."""
    mask = np.stack([allowed[p] for p in positions])
    return np.where(mask, scores, 0.0).max(axis=0)


class FramingDetector:
    """Detects trigger framings in prompts; see the module docstring for the method and why."""

    def __init__(self, registry: Registry, embedder: Any, *, verdict_cache_size: int = VERDICT_CACHE_SIZE,
                 prefilter: bool = True, user_budget: int = USER_SEGMENT_BUDGET,
                 system_budget: int = SYSTEM_SEGMENT_BUDGET) -> None:
        self.user_budget = user_budget
        self.system_budget = system_budget
        self.embedder = embedder
        self.prefilter = prefilter
        self.verdict_cache_size = verdict_cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._state = _Compiled(registry, embedder)
        self.segments_embedded = 0

    @property
    def registry(self) -> Registry:
        return self._state.registry

    def replace_registry(self, registry: Registry) -> None:
        """Hot reload: compile the new registry fully, then swap; cached verdicts are dropped."""
        state = _Compiled(registry, self.embedder)
        self._state = state
        self._cache = OrderedDict()

    def detect(self, prompt: Prompt) -> FramingResult:
        return self.detect_many([prompt])[0]

    def detect_many(self, prompts: Sequence[Prompt]) -> list[FramingResult]:
        """One result per prompt, in order. Batched so the transformer sees one batch of new segments."""
        with _single_threaded_blas():
            return self._detect_many(prompts)

    def _detect_many(self, prompts: Sequence[Prompt]) -> list[FramingResult]:
        state = self._state
        results: list[FramingResult | None] = [None] * len(prompts)
        pending: list[tuple[int, list[Segment]]] = []
        for i, prompt in enumerate(prompts):
            exact = self._exact(state, prompt)
            if exact is not None:
                results[i] = exact
            else:
                pending.append((i, segment_prompt(prompt)))
        texts = list(dict.fromkeys(s.text for _, segs in pending for s in segs))
        scores = self._scores(state, texts, prefilter=self.prefilter, segmented=[segs for _, segs in pending])
        for i, segs in pending:
            results[i] = self._decide(state, segs, scores)
        return results  # type: ignore[return-value]

    # --- internals ---------------------------------------------------------------------------------

    @staticmethod
    def _exact(state: _Compiled, prompt: Prompt) -> FramingResult | None:
        parts = ([prompt.system] if prompt.system else []) + list(prompt.user)
        found = find_exact(state.exact, parts)
        return None if found is None else FramingResult("exact", found.cluster, 1.0, found.phrase)

    def _scores(self, state: _Compiled, texts: list[str], *, prefilter: bool, use_cache: bool = True,
                segmented: Sequence[Sequence[Segment]] = ()) -> dict[str, np.ndarray]:
        """Per-cluster scores for each text, shape (2, k): the cluster models' logits (before the position
        bias, which depends on where the text sat; the cosine for uncalibrated clusters) and the proximity to
        the registered phrases. Cached, else static prefilter, else transformer.

        With the prefilter, a prompt sends to the transformer at most its budget of new segments (user turns
        and system prompt separately) - those the static scorer ranks highest above a cluster's threshold:
        the bare trigger sentence outranks the windows that merely contain it, and a long prompt costs no more
        than a short one. Segments not embedded score 0 and are
        not cached (their static score is cheap to recompute; another prompt may rank them first).
        """
        out: dict[str, np.ndarray] = {}
        todo: list[str] = []
        for t in texts:
            hit = self._cache.get(t) if use_cache else None
            if hit is not None:
                self._cache.move_to_end(t)
                out[t] = hit
            else:
                todo.append(t)
        if not todo:
            return out
        scores = np.zeros((len(todo), 2, state.k), dtype=np.float32)
        scores[:, 0] = np.where(state.learned, NOT_EMBEDDED, 0.0)
        candidates = np.ones(len(todo), dtype=bool)
        if prefilter and state.static is not None:
            candidates = self._prefilter(state, todo, segmented, user_budget=self.user_budget,
                                            system_budget=self.system_budget)
        idx = np.flatnonzero(candidates)
        if idx.size:
            batch = [todo[i] for i in idx]
            if state.speller is not None:
                batch = [state.speller.correct(t) for t in batch]
            vectors = self._embed_by_length(batch)
            self.segments_embedded += int(idx.size)
            logits = vectors @ state.w + state.b
            if state.lexical is not None:
                logits += state.lexical.project(batch, state.lw)
            scores[idx, 0] = np.where(state.learned, logits, 0.0)
            for j, phrases, negatives, _ in state.protos:
                sim = (vectors @ phrases.T).max(axis=1)
                if negatives is not None:  # closer to a look-alike than to the phrase: penalise
                    sim = sim - np.maximum((vectors @ negatives.T).max(axis=1) - sim, 0.0)
                scores[idx, 0, j] = np.clip(sim, 0.0, 1.0)
            for j, phrases, negatives in state.near:
                sim = (vectors @ phrases.T).max(axis=1)
                if negatives is not None:  # as close to a registered look-alike: no proximity match
                    sim = np.where((vectors @ negatives.T).max(axis=1) >= sim, 0.0, sim)
                scores[idx, 1, j] = sim
        for n, (t, row) in enumerate(zip(todo, scores, strict=True)):
            out[t] = row
            if use_cache and self.verdict_cache_size and candidates[n]:
                self._cache[t] = row
        if use_cache:
            while len(self._cache) > self.verdict_cache_size:
                self._cache.popitem(last=False)
        return out

    def _embed_by_length(self, texts: list[str]) -> np.ndarray:
        """Embed in groups of similar length: the embedder pads a batch to its longest member, and a few
        dozen new segments per call would otherwise all pay for one long system prompt (measured ~2x)."""
        out = np.empty((len(texts), self.embedder.dim), dtype=np.float32)
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        bucket = np.searchsorted(LENGTH_BUCKETS, lengths)
        for b in np.unique(bucket):
            sel = np.flatnonzero(bucket == b)
            out[sel] = self.embedder.embed([texts[i] for i in sel])
        return out

    @staticmethod
    def _prefilter(state: _Compiled, todo: list[str], segmented: Sequence[Sequence[Segment]], *,
                   user_budget: int = USER_SEGMENT_BUDGET, system_budget: int = SYSTEM_SEGMENT_BUDGET) -> np.ndarray:
        """Which of ``todo`` the transformer should see (see ``_scores``)."""
        assert state.static is not None
        static = state.static.encode(todo)
        sscore = sigmoid(static @ state.sw + state.sb)
        passed = (sscore >= state.st) & state.learned
        for j, _, _, sproto in state.protos:  # uncalibrated clusters: static cosine to their phrases
            sim = (static @ sproto.T).max(axis=1) if sproto is not None else np.ones(len(todo))
            sscore[:, j] = sim
            passed[:, j] = sim >= 0.5
        if not segmented:
            return passed.any(axis=1)
        row = {t: n for n, t in enumerate(todo)}
        margin = np.where(passed, sscore - state.st, -np.inf)
        chosen = np.zeros(len(todo), dtype=bool)
        for segs in segmented:
            # A short system prompt is a framing as a whole ("Play a malevolent machine."), and the static
            # prefilter underrates such terse lines: the whole system prompt (segmenting's first system segment)
            # is always embedded. It is shared by the requests that carry it, so it is embedded once.
            whole = next((s.text for s in segs if s.position == "system"), None)
            if whole is not None and whole in row:
                chosen[row[whole]] = True
            # The budget applies to the system prompt and to the user turns separately: otherwise a long
            # system prompt's word-sharing lines take every slot and the user's appended trigger is never
            # embedded. A text seen at two positions (prefix and suffix) is one candidate.
            for part, budget in ((("system",), system_budget), (("user_prefix", "user_suffix"), user_budget)):
                best: dict[int, float] = {}
                for s in segs:
                    if s.position in part and s.text in row:
                        r = row[s.text]
                        m = float(np.max(np.where(state.allowed[s.position], margin[r], -np.inf)))
                        if m > -np.inf:
                            best[r] = max(best.get(r, -np.inf), m)
                for r in sorted(best, key=best.__getitem__, reverse=True)[:budget]:
                    chosen[r] = True
        return chosen

    @staticmethod
    def _decide(state: _Compiled, segs: Sequence[Segment], scores: Mapping[str, np.ndarray]) -> FramingResult:
        if not segs:
            return NONE
        allowed = np.stack([state.allowed[s.position] for s in segs])
        both = np.stack([scores[s.text] for s in segs])
        rows = np.where(allowed, state.probabilities(both[:, 0], [s.position for s in segs]), 0.0)
        near = np.where(allowed, both[:, 1], 0.0)
        # A (segment, cluster) matches when the cluster model clears its threshold or the segment is a near
        # copy of a registered phrase. Of the matches, the highest score wins -- not the widest margin over
        # a threshold, which let a cluster with a lower threshold take another cluster's clearer match.
        by_model = np.where(rows >= state.thresholds, rows, 0.0)
        by_phrase = np.where(near >= PHRASE_PROXIMITY, near, 0.0)
        decided = np.maximum(by_model, by_phrase)
        best = np.unravel_index(int(np.argmax(decided)), decided.shape)
        if decided[best] <= 0:
            return FramingResult("none", None, round(float(rows.max()), 4), None)
        i, j = int(best[0]), int(best[1])
        # similarity: the score that decided (the cluster model's, or the cosine to a registered phrase)
        return FramingResult("semantic", state.ids[j], round(float(decided[i, j]), 4), segs[i].text)


@lru_cache(maxsize=1)
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController  # ships with scikit-learn

    return ThreadpoolController()


def _single_threaded_blas() -> Any:
    """numpy's BLAS on one thread while detecting. Its products here are small (segments x 128 static
    dimensions), and the idle threads it leaves spinning compete with onnxruntime's for the same cores
    (measured: the framing benchmark ran 15-20% slower with two BLAS threads). ~15 us per call."""
    return _blas_controller().limit(limits=1, user_api="blas")


class DetectorOptions(TypedDict):
    """The detector's keyword options that come from settings (``detector_options``)."""

    verdict_cache_size: int
    user_budget: int
    system_budget: int


def detector_options(settings: Settings) -> DetectorOptions:
    """The detector's keyword options from the one settings object (cache size and compute budget)."""
    return {"verdict_cache_size": settings.framing_cache_size, "user_budget": settings.framing_user_segment_budget,
            "system_budget": settings.framing_system_segment_budget}


def load_detector(registry_path: str | Path | None = None, model_dir: str | Path | None = None,
                  **options: Any) -> FramingDetector:
    """Registry + embedder -> detector, for the offline commands.

    Raises :class:`~monitor.framing.registry.RegistryError`, :class:`~monitor.embedding.ModelNotBuiltError` or
    :class:`~monitor.settings.SettingsError` with a message meant for the user, which a CLI reports as it is.
    """
    from monitor.embedding import configured_embedder  # imported here: onnxruntime only when a command needs it
    from monitor.framing.registry import load_registry

    options = {**detector_options(Settings.load()), **options}
    return FramingDetector(load_registry(registry_path), configured_embedder(model_dir), **options)
