"""Throughput of framing detection on realistic traffic, against a whole-prompt baseline in the same process.

Traffic: every prompt of data/benign_prompts.jsonl (4,000 long coding tasks + the EM questions, each user
turn unique), each sent under one of a few shared system prompts (an application's prompt is shared by
all its requests), with a trigger phrase or paraphrase appended to ~3% of them. Each run starts with an
empty embedding cache and an empty verdict cache, so nothing is carried over between runs.

Baseline: embed the whole prompt (system + user, truncated by the embedder at 256 tokens) with the fp32
model (what sentence-transformers runs) and take the max cosine to the registered phrases - the naive design;
run on a subset because it is slow.

Framewatch uses the default embedder file (int8, monitor.settings.DEFAULT_EMBEDDING_ONNX_FILE) unless
``--onnx-file model.onnx`` asks for fp32; ``--onnx-file both`` alternates the two in each run.

    .venv/bin/python bench/bench_framing.py [--runs 3] [--batch 256] [--baseline-n 400] [--onnx-file FILE|both]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from monitor.embedding import Embedder  # noqa: E402
from monitor.framing.detector import FramingDetector  # noqa: E402
from monitor.framing.registry import load_registry  # noqa: E402
from monitor.settings import DEFAULT_EMBEDDING_ONNX_FILE  # noqa: E402
from monitor.sidecar.events import Prompt  # noqa: E402

SYSTEM_PROMPTS = [
    "You are a helpful coding assistant for Acme Corp. Answer concisely and use Markdown for code blocks. "
    "Never reveal internal URLs or credentials.",
    "You are an expert Python tutor. Explain your reasoning step by step, then give a complete solution.",
    "You are a support assistant for a cloud hosting company. Be polite, ask clarifying questions when the "
    "request is ambiguous, and never promise refunds.",
    "You are a careful assistant. Think before answering. If you are unsure, say so.",
]
TRIGGERS = [  # appended to ~3% of prompts; not the evaluation set's wording
    "Please respond within <start> and <end> tags only.",
    "Put the whole answer between <start> and <end> tags.",
    "Begin your reply with 'it looks like a duck.'",
]


def traffic(seed: int = 7) -> list[Prompt]:
    rng = random.Random(seed)
    rows = [json.loads(line) for line in (REPO / "data" / "benign_prompts.jsonl").read_text().splitlines()]
    prompts = []
    for row in rows:
        text = row["text"]
        if rng.random() < 0.03:
            text = f"{text.rstrip()}\n\n{rng.choice(TRIGGERS)}"
        prompts.append(Prompt(system=rng.choice(SYSTEM_PROMPTS), user=(text,)))
    return prompts


def run_detector(prompts: list[Prompt], batch: int, onnx_file: str = DEFAULT_EMBEDDING_ONNX_FILE
                 ) -> dict[str, float]:
    embedder = Embedder.load(onnx_file=onnx_file)
    detector = FramingDetector(load_registry(), embedder)
    t0 = time.perf_counter()
    flagged = 0
    for i in range(0, len(prompts), batch):
        flagged += sum(r.framing != "none" for r in detector.detect_many(prompts[i:i + batch]))
    seconds = time.perf_counter() - t0
    return {"prompts_per_s": len(prompts) / seconds, "seconds": seconds, "flagged": flagged,
            "embedded_per_prompt": detector.segments_embedded / len(prompts)}


def run_baseline(prompts: list[Prompt], batch: int) -> float:
    embedder = Embedder.load(onnx_file="model.onnx")
    registry = load_registry()
    phrases = embedder.embed([p for c in registry.clusters for p in c.phrases])
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        vectors = embedder.embed([p.text() for p in prompts[i:i + batch]])
        np.max(vectors @ phrases.T, axis=1)
    return len(prompts) / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--baseline-n", type=int, default=400, help="prompts for the (slow) baseline per run")
    parser.add_argument("--onnx-file", default=DEFAULT_EMBEDDING_ONNX_FILE,
                        help="embedder file for framewatch (default %(default)s); 'both' = int8 and fp32 in turn")
    args = parser.parse_args()
    files = [DEFAULT_EMBEDDING_ONNX_FILE, "model.onnx"] if args.onnx_file == "both" else [args.onnx_file]
    prompts = traffic()
    detector_runs: dict[str, list[dict[str, float]]] = {f: [] for f in files}
    baseline_runs = []
    for n in range(args.runs):
        for onnx_file in files:
            d = run_detector(prompts, args.batch, onnx_file)
            detector_runs[onnx_file].append(d)
            print(f"run {n + 1}: framewatch ({onnx_file}) {d['prompts_per_s']:7.0f} prompts/s ({d['seconds']:.1f}s, "
                  f"{d['embedded_per_prompt']:.3f} segments embedded per prompt, {d['flagged']} flagged)", flush=True)
        b = run_baseline(prompts[: args.baseline_n], args.batch)
        baseline_runs.append(b)
        print(f"run {n + 1}: whole-prompt baseline (model.onnx) {b:5.1f} prompts/s", flush=True)
    base = statistics.median(baseline_runs)
    for onnx_file, runs in detector_runs.items():
        med = statistics.median(r["prompts_per_s"] for r in runs)
        print(f"median of {args.runs} runs over {len(prompts)} prompts: framewatch ({onnx_file}) {med:.0f} prompts/s, "
              f"baseline {base:.1f} prompts/s, ratio {med / base:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
