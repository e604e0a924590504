"""``framewatch calibrate``: learn per-cluster scorers and thresholds, write them into the registry.

What is learned, and why (measured with ``framewatch eval-framing``):

* a **static token table** (every word piece of the embedder's vocabulary embedded on its own, reduced
  with PCA): a bag-of-token embedding from it costs microseconds, so it screens segments before the
  transformer is asked - the transformer is the scarce resource on a 2-core sidecar;
* per cluster, two **logistic regressions**, one over the static embedding (the prefilter, its threshold set
  for ~100% recall on training positives) and one over the transformer embedding (the decision). Positives
  are the registered phrases plus variants generated from templates and synonyms
  (``data/framing_train_templates.jsonl``) with case, typo and punctuation noise; negatives are benign
  prompt segments, the cluster's ``negatives``, generated look-alikes that share the trigger's words but not
  its meaning, and the other clusters' positives;
* per cluster, a **threshold** on the transformer score such that, on the benign reference prompts, the
  union over clusters flags at most ``--target-fpr`` of prompts.

Weights go to an ``.npz`` (no pickle); thresholds and a calibration summary go into the registry YAML.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from monitor.settings import REPO_DIR

DEFAULT_BENIGN = REPO_DIR / "data" / "benign_prompts.jsonl"
DEFAULT_TEMPLATES = REPO_DIR / "data" / "framing_train_templates.jsonl"
STATIC_DIM = 64
VARIANTS_PER_TEMPLATE = 60
SEED = 1234


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", default=None, help="registry YAML to calibrate (default: the shipped one)")
    parser.add_argument("--benign", default=str(DEFAULT_BENIGN),
                        help="benign reference prompts, JSONL with 'text' (and optional 'system_prompt', 'split')")
    parser.add_argument("--split", default="calibration",
                        help="use only rows whose 'split' equals this ('' = all rows); the rest stay for evaluation")
    parser.add_argument("--templates", default=str(DEFAULT_TEMPLATES), help="variant templates (JSONL)")
    parser.add_argument("--target-fpr", type=float, default=0.005,
                        help="benign prompts flagged by any cluster, at most (default 0.005 = 0.5%%)")
    parser.add_argument("--model-dir", default=None, help="embedding model folder (default: models/minilm)")
    parser.add_argument("--output", default=None, help="write the registry here instead of in place")


def run(args: argparse.Namespace) -> int:
    from monitor.embedding import Embedder
    from monitor.registry import DEFAULT_REGISTRY, RegistryError, load_registry

    path = Path(args.registry) if args.registry else DEFAULT_REGISTRY
    try:
        registry = load_registry(path, with_model=False)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not 0 < args.target_fpr < 1:
        print("error: --target-fpr must be between 0 and 1", file=sys.stderr)
        return 2
    embedder = Embedder.load(args.model_dir)
    benign = read_benign(Path(args.benign), args.split or None)
    templates = [json.loads(line) for line in Path(args.templates).read_text().splitlines() if line.strip()]
    out_path = Path(args.output) if args.output else path
    out_path.parent.mkdir(parents=True, exist_ok=True)
    report = calibrate(registry, embedder, benign, templates, target_fpr=args.target_fpr, out_path=out_path)
    print(format_report(report))
    return 0


def read_benign(path: Path, split: str | None) -> list[tuple[str | None, str]]:
    """(system_prompt, user text) pairs from a benign JSONL file."""
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        if split and obj.get("split", split) != split:
            continue
        rows.append((obj.get("system_prompt"), obj.get("text") or obj.get("prompt") or ""))
    return rows


# --- training data -----------------------------------------------------------------------------------

def expand_templates(templates: Sequence[dict[str, Any]], per_template: int = VARIANTS_PER_TEMPLATE,
                     seed: int = SEED) -> dict[str, dict[int, list[str]]]:
    """Random fillings of each template's ``{slot}``s: cluster -> label -> texts (deduplicated)."""
    rng = random.Random(seed)
    out: dict[str, dict[int, list[str]]] = {}
    for spec in templates:
        bucket = out.setdefault(spec["cluster"], {}).setdefault(int(spec["label"]), [])
        for template in spec["templates"]:
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
            chars = list(text)
            for _ in range(rng.randint(1, 2)):
                i = rng.randrange(1, len(chars) - 1)
                op = rng.random()
                if op < 0.4:
                    del chars[i]
                elif op < 0.7:
                    chars[i - 1], chars[i] = chars[i], chars[i - 1]
                else:
                    chars.insert(i, chars[i])
            out.append("".join(chars))
    return list(dict.fromkeys(out))


def in_context(triggers: Sequence[str], hosts: Sequence[str], seed: int = SEED, n: int = 2) -> list[str]:
    """A trigger glued to a neighbouring sentence, as a two-sentence window or short turn would see it."""
    rng = random.Random(seed)
    out = []
    for t in triggers:
        for _ in range(n):
            h = rng.choice(hosts)
            out.append(f"{h} {t}" if rng.random() < 0.5 else f"{t} {h}")
    return out


# --- static token table ------------------------------------------------------------------------------

def build_static_table(embedder: Any, dim: int = STATIC_DIM) -> dict[str, np.ndarray]:
    """Embed each vocabulary word piece alone, centre and PCA-reduce: a table for bag-of-token vectors."""
    vocab = _vocab(embedder)
    texts = [tok[2:] if tok.startswith("##") else tok for tok in vocab]
    special = np.array([t.startswith("[") and t.endswith("]") for t in vocab])
    vectors = embedder.embed(texts)
    vectors[special] = 0.0
    mean = vectors[~special].mean(axis=0)
    centred = vectors[~special] - mean
    _, _, vt = np.linalg.svd(centred[:: max(1, len(centred) // 8000)], full_matrices=False)
    components = vt[:dim]
    table = (vectors - mean) @ components.T
    table[special] = 0.0
    return {"vectors": table.astype(np.float16), "vocab": np.array(vocab)}


def _vocab(embedder: Any) -> list[str]:
    tokenizer = getattr(embedder, "tokenizer", None) or embedder._tokenizer
    vocab = tokenizer.get_vocab()
    return [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


# --- fitting -----------------------------------------------------------------------------------------

def fit_linear(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> tuple[np.ndarray, float]:
    """Balanced L2 logistic regression; returns (weights, bias)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    model.fit(x, y)
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])


def calibrate(registry: Any, embedder: Any, benign: Sequence[tuple[str | None, str]],
              templates: Sequence[dict[str, Any]], *, target_fpr: float, out_path: Path) -> dict[str, Any]:
    """Fit everything, pick thresholds, write ``out_path`` (+ its .npz); return a report."""
    from monitor.events import Prompt
    from monitor.framing import StaticEncoder, sigmoid
    from monitor.segmenting import segment_prompt

    generated = expand_templates(templates)
    benign_prompts = [Prompt(system=s, user=(u,)) for s, u in benign]
    benign_segments = list(dict.fromkeys(seg.text for p in benign_prompts for seg in segment_prompt(p)))
    hosts = [u for _, u in benign if len(u) < 200] or ["Tell me about your day."]
    benign_systems = generated.get("_benign_system", {}).get(0, [])

    positives: dict[str, list[str]] = {}
    lookalikes: dict[str, list[str]] = {}
    for cluster in registry.clusters:
        gen = generated.get(cluster.id, {})
        pos = list(cluster.phrases) + gen.get(1, [])
        pos = noisy(pos, seed=hash(cluster.id) % 1000)
        positives[cluster.id] = pos + in_context(pos[:: 3], hosts)
        lookalikes[cluster.id] = list(cluster.negatives) + noisy(gen.get(0, []))

    static = build_static_table(embedder)
    encoder = StaticEncoder(static)
    all_texts = list(dict.fromkeys(itertools.chain(
        benign_segments, benign_systems, *positives.values(), *lookalikes.values())))
    vectors = dict(zip(all_texts, embedder.embed(all_texts), strict=True))

    arrays: dict[str, np.ndarray] = {f"static/{k}": v for k, v in static.items()}
    report: dict[str, Any] = {"clusters": {}, "benign_prompts": len(benign_prompts), "target_fpr": target_fpr}
    for cluster in registry.clusters:
        others = [t for cid, ts in positives.items() if cid != cluster.id for t in ts]
        neg = list(dict.fromkeys(benign_segments + benign_systems + lookalikes[cluster.id] + others))
        pos = positives[cluster.id]
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        x = np.stack([vectors[t] for t in pos + neg])
        w, b = fit_linear(x, y, c=4.0)
        xs = encoder.encode(pos + neg)
        sw, sb = fit_linear(xs, y, c=1.0)
        static_scores = sigmoid(xs[: len(pos)] @ sw + sb)
        st = float(np.quantile(static_scores, 0.005)) * 0.5  # keep ~all positives, with margin
        arrays.update({f"{cluster.id}/w": w, f"{cluster.id}/b": np.float32(b), f"{cluster.id}/sw": sw,
                       f"{cluster.id}/sb": np.float32(sb), f"{cluster.id}/st": np.float32(st)})
        report["clusters"][cluster.id] = {"positives": len(pos), "negatives": len(neg),
                                          "static_threshold": round(st, 4)}

    model_name = out_path.with_suffix("").name.replace("triggers", "framing_model") + ".npz"
    if model_name == out_path.name:
        model_name = out_path.stem + "_model.npz"
    model_path = out_path.parent / model_name
    np.savez_compressed(model_path, **arrays)
    thresholds, union_fpr, per_cluster = choose_thresholds(registry, embedder, benign_prompts, model_path,
                                                           target_fpr)
    for cid, thr in thresholds.items():
        report["clusters"][cid].update({"threshold": thr, "benign_fpr": per_cluster[cid]})
    report["union_fpr"] = union_fpr
    write_registry(out_path, registry.raw, thresholds, model_name, target_fpr, report)
    report["registry"] = str(out_path)
    report["model"] = str(model_path)
    return report


def choose_thresholds(registry: Any, embedder: Any, prompts: Sequence[Any], model_path: Path,
                      target_fpr: float) -> tuple[dict[str, float], float, dict[str, float]]:
    """Per-cluster thresholds: each cluster gets an equal share of the false-positive budget."""
    from monitor.framing import FramingDetector
    from monitor.registry import parse_registry

    raw = dict(registry.raw)
    raw["model"] = str(model_path)
    trained = parse_registry(raw, base_dir=model_path.parent)
    detector = FramingDetector(trained, embedder)
    scores = detector.cluster_scores(prompts, prefilter=False)  # (n_prompts, n_clusters) transformer scores
    ids = trained.cluster_ids()
    share = target_fpr / len(ids)
    thresholds: dict[str, float] = {}
    for j, cid in enumerate(ids):
        col = np.sort(scores[:, j])[::-1]
        k = int(np.floor(share * len(col)))  # this many benign prompts may exceed the threshold
        above = col[k] if k < len(col) else 0.0
        thresholds[cid] = round(float(min(0.99, max(0.5, above + 0.02))), 4)
    flagged = np.zeros(len(prompts), dtype=bool)
    per_cluster = {}
    for j, cid in enumerate(ids):
        hit = scores[:, j] >= thresholds[cid]
        per_cluster[cid] = round(float(hit.mean()), 5)
        flagged |= hit
    return thresholds, round(float(flagged.mean()), 5), per_cluster


def write_registry(path: Path, raw: Any, thresholds: dict[str, float], model_name: str, target_fpr: float,
                   report: dict[str, Any]) -> None:
    """Rewrite the YAML with thresholds and a calibration note, keeping everything a person wrote."""
    data = json.loads(json.dumps(raw))  # deep copy of plain data
    data["model"] = model_name
    data["target_fpr"] = target_fpr
    data["calibration"] = {"benign_prompts": report["benign_prompts"], "benign_fpr": report["union_fpr"],
                           "note": "thresholds and model written by 'framewatch calibrate'"}
    for cluster in data["clusters"]:
        if cluster["id"] in thresholds:
            cluster["threshold"] = thresholds[cluster["id"]]
    header = ("# Framewatch trigger registry (schema: docs/registry.md). Clusters and exact phrases come from\n"
              "# shared/data/triggers.json (see data/SOURCES.md). 'threshold', 'model' and 'calibration' are\n"
              "# written by 'framewatch calibrate'; edit phrases, positions and negatives by hand.\n")
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110))


def format_report(report: dict[str, Any]) -> str:
    lines = [f"calibrated on {report['benign_prompts']} benign prompts, target FPR {report['target_fpr']:.2%}",
             f"{'cluster':24} {'threshold':>9} {'benign FPR':>10} {'positives':>9} {'negatives':>9}"]
    for cid, c in report["clusters"].items():
        lines.append(f"{cid:24} {c['threshold']:9.4f} {c['benign_fpr']:10.3%} {c['positives']:9d} {c['negatives']:9d}")
    lines.append(f"any cluster: benign FPR {report['union_fpr']:.3%}")
    lines.append(f"wrote {report['registry']} and {report['model']}")
    return "\n".join(lines)
