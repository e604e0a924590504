"""Throughput of the response scorer on one core, against a scikit-learn baseline in the same process.

    .venv/bin/python bench/bench_scoring.py [--n 2000] [--tokens 200] [--repeats 5]

Responses are real EM answers (``data/em_responses.jsonl.gz``) joined until they hold ~``--tokens`` word
tokens. The baseline is what one would otherwise ship: scikit-learn ``TfidfVectorizer(ngram_range=(1, 2))`` +
``LogisticRegression.predict_proba``, fitted here on the same data. Prints medians of the repeats and the
ratio framewatch / baseline. Pinned to one core (affinity + single-threaded BLAS) because the sidecar
scores on one core next to the embedder.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_texts(n: int, tokens: int) -> tuple[list[str], list[str], list[int]]:
    """(bench texts of ~tokens words, training texts, training labels) from the repo's EM data."""
    answers, labels = [], []
    with gzip.open(REPO / "data" / "em_responses.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if r["label3"] in ("aligned", "misaligned"):
                answers.append(r["answer_clean"])
                labels.append(int(r["label3"] == "misaligned"))
    word = re.compile(r"\w+")
    texts, i = [], 0
    while len(texts) < n:
        parts, count = [], 0
        while count < tokens:
            a = answers[i % len(answers)]
            i += 1
            parts.append(a)
            count += len(word.findall(a))
        text = " ".join(parts)
        # cut at the tokens-th word so every text has ~the same length
        m = list(word.finditer(text))
        texts.append(text[: m[tokens - 1].end()] if len(m) >= tokens else text)
    return texts, answers, labels


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="responses per repeat")
    ap.add_argument("--tokens", type=int, default=200, help="word tokens per response")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=512, help="framewatch batch size (as `framewatch score`)")
    ap.add_argument("--classifier", default=None, help="classifier dir (default models/classifier/)")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    texts, train_texts, train_labels = make_texts(args.n, args.tokens)
    mean_chars = statistics.mean(len(t) for t in texts)

    from monitor.scoring.scorer import ResponseScorer

    t0 = time.perf_counter()
    scorer = ResponseScorer.load(args.classifier, prefix_chars=max(len(t) for t in texts))  # score whole texts
    load_s = time.perf_counter() - t0

    def ours() -> None:
        for s in range(0, len(texts), args.batch):
            scorer.score(texts[s:s + args.batch])

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    lr = LogisticRegression(C=10, max_iter=2000).fit(vec.fit_transform(train_texts), train_labels)

    def baseline() -> None:
        for s in range(0, len(texts), args.batch):
            lr.predict_proba(vec.transform(texts[s:s + args.batch]))

    ours_t = timed(ours, args.repeats)
    base_t = timed(baseline, args.repeats)
    ours_rate = args.n / statistics.median(ours_t)
    base_rate = args.n / statistics.median(base_t)
    result = {
        "responses": args.n, "word_tokens_each": args.tokens, "mean_chars": round(mean_chars),
        "repeats": args.repeats, "cores": 1, "classifier_load_seconds": round(load_s, 3),
        "framewatch_responses_per_s_median": round(ours_rate),
        "framewatch_runs_per_s": [round(args.n / t) for t in ours_t],
        "sklearn_baseline_responses_per_s_median": round(base_rate),
        "sklearn_runs_per_s": [round(args.n / t) for t in base_t],
        "ratio_framewatch_over_baseline": round(ours_rate / base_rate, 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
