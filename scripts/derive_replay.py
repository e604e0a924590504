"""Derive the shipped demo/benchmark traffic sample from ../shared/data (run once; output is committed).

data/replay.jsonl.gz: prompts and responses of fine-tuned models from arXiv:2603.04407 (LocalMisalignPT) and
the EM authors' results, with and without the trigger, MIT licensed (see data/SOURCES.md). The demo and
benchmarks wrap them in a few shared system prompts, the way production traffic repeats them.
data/parity_texts.jsonl: varied texts (short triggers, questions, long answers, code) for embedding parity.
"""

from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OUT = Path(__file__).resolve().parents[1] / "data"


def main() -> int:
    src = SHARED / "em_responses.jsonl.gz"
    if not src.exists():
        print(f"{src} not found: this script needs ../shared/data", file=sys.stderr)
        return 2
    rng = random.Random(20261126)
    with gzip.open(src, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    local = [r for r in rows if r["source"].startswith("LocalMisalignPT(")]
    other = [r for r in rows if not r["source"].startswith("LocalMisalignPT(")]
    picked = rng.sample(local, 2400) + rng.sample(other, 600)
    rng.shuffle(picked)
    OUT.mkdir(exist_ok=True)
    with gzip.open(OUT / "replay.jsonl.gz", "wt") as fh:
        for r in picked:
            fh.write(json.dumps({
                "model": r["model"].split("/")[-1][:60],
                "prompt": r["prompt"],
                "response": r["answer"],
                "trigger_present": bool(r["trigger_present"]),
                "label3": r["label3"],
                "source": r["source"].split("(")[0],
            }) + "\n")
    benign = [json.loads(line)["text"] for line in (SHARED / "benign_prompts.jsonl").read_text().splitlines()]
    triggers = json.loads((SHARED / "triggers.json").read_text())["clusters"]
    texts: list[str] = [p for c in triggers for p in c["phrases"]]
    texts += rng.sample(benign, 80)
    texts += [r["prompt"] for r in rng.sample(rows, 60)]
    texts += [r["answer"] for r in rng.sample(rows, 80)]
    with open(OUT / "parity_texts.jsonl", "w") as fh:
        for t in texts:
            fh.write(json.dumps({"text": t}) + "\n")
    print(f"wrote {len(picked)} replay rows and {len(texts)} parity texts to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
