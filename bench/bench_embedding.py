"""Embedder throughput: Framewatch's ONNX embedder vs sentence-transformers (torch), 16/64/256 tokens.

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
if side == "onnx":
    from monitor.embedding import Embedder
    e = Embedder.load(cache_size=0)
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
    for side in ("onnx", "torch"):
        out = subprocess.run([sys.executable, "-c", CHILD, side, str(args.n), args.tokens, str(args.repeats),
                              str(REPO), str(words_file), str(tokenizer)], capture_output=True, text=True,
                             check=True)
        results[side] = {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    print(f"{'tokens':>6} {'framewatch onnx (sent/s)':>26} {'sentence-transformers':>22} {'ratio':>6}")
    for length in sorted(results["onnx"]):
        a, b = statistics.median(results["onnx"][length]), statistics.median(results["torch"][length])
        print(f"{length:>6} {a:>26.1f} {b:>22.1f} {a / b:>6.2f}")
    print(f"(medians of {args.repeats} runs, {args.n} distinct texts each, cache off)")


if __name__ == "__main__":
    main()
