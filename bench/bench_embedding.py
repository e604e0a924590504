"""Embedder throughput: Framewatch's ONNX embedder (int8, the default, and fp32) vs sentence-transformers
(torch), 16/64/256 tokens. The int8 model runs one text per run (its output is batch-dependent; see
monitor/embedding.py), fp32 and torch in batches of 64.

Each side runs in its own child process (torch's idle threads slow numpy/onnxruntime in a shared process,
which would flatter neither side), both in this one run, on the same texts; medians of --repeats.

    .venv/bin/python bench/bench_embedding.py [--repeats 3] [--n 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
side, n, tokens, repeats = sys.argv[1], int(sys.argv[2]), [int(t) for t in sys.argv[3].split(",")], int(sys.argv[4])
from tokenizers import Tokenizer
sys.path.insert(0, sys.argv[5])
words = open(sys.argv[6]).read().split()
tok = Tokenizer.from_file(sys.argv[7]); tok.no_truncation(); tok.no_padding()
def texts_of(length):
    # Exactly `length` tokens with [CLS]/[SEP]: cut a long passage at length-2 word pieces, decode back.
    out = []
    for i in range(n):
        start = (i * 37) % (len(words) - 400)
        ids = tok.encode(" ".join(words[start:start + 400]), add_special_tokens=False).ids[:length - 2]
        out.append(tok.decode(ids))
    return out
if side.startswith("onnx:"):
    from monitor.embedding import Embedder
    e = Embedder.load(cache_size=0, onnx_file=side[len("onnx:"):])
    run = lambda ts: e.embed(ts)
else:
    from sentence_transformers import SentenceTransformer
    from monitor._export import source_model_dir
    m = SentenceTransformer(str(source_model_dir()), device="cpu")
    run = lambda ts: m.encode(ts, batch_size=64, normalize_embeddings=True)
result = {}
for length in tokens:
    ts = texts_of(length)
    run(ts[:16])
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter(); run(ts); rates.append(len(ts) / (time.perf_counter() - t0))
    result[length] = rates
print(json.dumps(result))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--tokens", default="16,64,256")
    args = parser.parse_args()
    corpus = REPO / "data" / "parity_texts.jsonl"
    words_file = Path("/tmp/framewatch-bench-words.txt")
    words_file.write_text(" ".join(json.loads(line)["text"] for line in corpus.read_text().splitlines()))
    tokenizer = REPO / "models" / "minilm" / "tokenizer.json"
    results = {}
    sides = ("onnx:model.int8.onnx", "onnx:model.onnx", "torch")
    for side in sides:
        out = subprocess.run([sys.executable, "-c", CHILD, side, str(args.n), args.tokens, str(args.repeats),
                              str(REPO), str(words_file), str(tokenizer)], capture_output=True, text=True,
                             check=True)
        results[side] = {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    print(f"{'tokens':>6} {'onnx int8 (sent/s)':>19} {'onnx fp32':>10} {'sentence-transformers':>22} "
          f"{'int8/st':>8} {'fp32/st':>8}")
    for length in sorted(results["torch"]):
        a, f, b = (statistics.median(results[s][length]) for s in sides)
        print(f"{length:>6} {a:>19.1f} {f:>10.1f} {b:>22.1f} {a / b:>8.2f} {f / b:>8.2f}")
    print(f"(medians of {args.repeats} runs, {args.n} distinct texts each, cache off)")


if __name__ == "__main__":
    main()
