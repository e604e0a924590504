"""End-to-end throughput: events/s through a real broker and the sidecar (framing + scoring on).

Traffic: replayed real prompts and responses, wrapped in a few shared system prompts the way production
traffic repeats them (monitor/_replay.py). Each run starts a fresh consumer group on the same topic, so the
sidecar processes the whole backlog from a cold start (cache empty); throughput is measured from the first
processed event to the last. Also, in this process on the same events: Framewatch's pipeline vs the
"peers' recipe" baseline (embed every whole prompt and response with the fp32 model), as a ratio. The
sidecar embeds with its default file (int8; FRAMEWATCH_EMBEDDING_ONNX_FILE=model.onnx for fp32).

    .venv/bin/python bench/bench_e2e.py [--events 6000] [--runs 3] [--traffic replay|rag]

``--traffic rag``: retrieval-augmented requests - one shared system prompt plus 2-8 KB of unique retrieved text
(1-3 of writer-d's documents and real answers of fine-tuned models, data/framing/) and a question - where a
tenth carry a trigger line appended after the question (the user-placed paraphrases of the writer-a/b sets,
never tuned on). Prints the events/s and, next to it, the recall on those appended triggers and the share of
untriggered events flagged, from the same detector in this process.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import sidecar_rate  # noqa: E402
from monitor import _replay as replay  # noqa: E402
from monitor._tansu import LocalBroker  # noqa: E402
from tests.harness import SidecarProcess, produce  # noqa: E402

TOPIC = "llm.inferences"


def events(n: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    rows = replay.load_rows()
    return [replay.make_event(rng.choice(rows), rng) for _ in range(n)]


RAG_SYSTEM = ("You are the knowledge-base assistant for our company. Answer using only the retrieved documents "
              "below and cite them by number.")
TRIGGERED_SHARE = 0.1


def rag_events(n: int, seed: int) -> tuple[list[tuple[str, bytes]], list[str | None]]:
    """RAG-shaped events and, per event, the cluster of its appended trigger (None: untriggered)."""
    import gzip
    import uuid

    rng = random.Random(seed)
    framing = REPO / "data" / "framing"
    docs = [json.loads(x) for x in (framing / "corpus" / "writer-d-documents.jsonl").read_text().splitlines()]
    with gzip.open(REPO / "data" / "em_responses.jsonl.gz", "rt") as fh:
        answers = [r["answer_clean"] for r in map(json.loads, fh) if len(r["answer_clean"]) > 300]
    triggers = [r for w in ("writer-a", "writer-b")
                for r in map(json.loads, (framing / "eval" / w / "01-set.jsonl").read_text().splitlines())
                if r["kind"] == "paraphrase" and r["position"] == "user_suffix" and not r.get("system_prompt")]
    rows = replay.load_rows()
    # The replayed questions include the paper's triggered prompts: an untriggered RAG event must ask an
    # untriggered question, or its "false positives" are the trigger it carries.
    questions = [r for r in rows if not r.trigger_present]
    out, labels = [], []
    for _ in range(n):
        parts = [f"[{i}] {d['title']}\n{d['text']}" for i, d in enumerate(rng.sample(docs, rng.randint(1, 2)), 1)]
        while sum(map(len, parts)) < rng.randint(2000, 8000):
            parts.append(f"[{len(parts) + 1}] {rng.choice(answers)}")
        question = rng.choice(questions).prompt[:300]
        label = None
        if rng.random() < TRIGGERED_SHARE:
            trig = rng.choice(triggers)
            question, label = trig["prompt"], trig["cluster"]
        event_id = str(uuid.UUID(int=rng.getrandbits(128)))
        event = {"event_id": event_id, "model": "rag-model", "system_prompt": RAG_SYSTEM,
                 "prompt": "Retrieved documents:\n\n" + "\n\n".join(parts) + f"\n\nQuestion: {question}",
                 "response": rng.choice(rows).response}
        out.append((event_id, json.dumps(event).encode()))
        labels.append(label)
    return out, labels


def rag_accuracy(sample: list[tuple[str, bytes]], labels: list[str | None]) -> tuple[float, float, int]:
    """(recall on appended triggers, share of untriggered events flagged, triggered count), in this process."""
    from monitor.framing.detector import load_detector
    from monitor.sidecar.events import decode_event

    detector = load_detector()
    verdicts = detector.detect_many([decode_event(v).prompt for _, v in sample])
    hits = [v.cluster == c for v, c in zip(verdicts, labels, strict=True) if c is not None]
    false = [v.framing != "none" for v, c in zip(verdicts, labels, strict=True) if c is None]
    return sum(hits) / max(1, len(hits)), sum(false) / max(1, len(false)), len(hits)


def e2e_run(broker: LocalBroker, n: int, run: int, workdir: Path) -> float:
    return sidecar_rate(SidecarProcess(broker.bootstrap, workdir / f"sidecar-{run}.log", group_id=f"bench-{run}",
                                       extra_env={"FRAMEWATCH_LOG_LEVEL": "warning"}), n)


def in_process(sample: list[tuple[str, bytes]], repeats: int, bootstrap: str) -> tuple[list[float], list[float]]:
    from monitor import logs
    from monitor.embedding import Embedder
    from monitor.settings import Settings
    from monitor.sidecar import app as sidecar
    from monitor.sidecar.events import decode_event
    from monitor.sidecar.pipeline import Record

    logs.configure("warning")
    env = {"FRAMEWATCH_HTTP_PORT": "1", "FRAMEWATCH_KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    app = sidecar.build(Settings.load(env=env))
    records = [Record(TOPIC, 0, i, v) for i, (_, v) in enumerate(sample)]
    ours, naive = [], []
    for _ in range(repeats):
        app.pipeline.detector.embedder._cache.clear()
        t0 = time.perf_counter()
        for start in range(0, len(records), 256):
            app.pipeline.process(records[start:start + 256])
        ours.append(len(records) / (time.perf_counter() - t0))
    baseline = Embedder.load(cache_size=0, onnx_file="model.onnx")  # fp32, as sentence-transformers runs it
    decoded = [decode_event(v) for _, v in sample]
    for _ in range(repeats):
        t0 = time.perf_counter()
        for start in range(0, len(decoded), 64):
            chunk = decoded[start:start + 64]
            baseline.embed([e.prompt.text() for e in chunk] + [e.response for e in chunk])
        naive.append(len(decoded) / (time.perf_counter() - t0))
    return ours, naive


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-events", type=int, default=300)
    parser.add_argument("--traffic", choices=("replay", "rag"), default="replay")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="framewatch-bench-"))
    if args.traffic == "rag":
        sample, labels = rag_events(args.events, seed=7)
        recall, flagged, triggered = rag_accuracy(sample, labels)
        make = lambda n, seed: rag_events(n, seed)[0]  # noqa: E731
    else:
        sample, make = events(args.events, seed=7), events
    with LocalBroker(log_path=workdir / "broker.log") as broker:
        broker.create_topics({TOPIC: 2, "llm.inferences.dlq": 1})
        produce(broker.bootstrap, TOPIC, sample)
        rates = [e2e_run(broker, args.events, run, workdir) for run in range(args.runs)]
        ours, naive = in_process(make(args.baseline_events, 8), args.runs, broker.bootstrap)
    print(f"end-to-end through the broker ({args.traffic} traffic): {args.events} events, {args.runs} runs, events/s "
          f"median {statistics.median(rates):.0f} (min {min(rates):.0f}, max {max(rates):.0f})")
    if args.traffic == "rag":
        print(f"same traffic, this process: recall on {triggered} appended triggers {recall:.3f}, "
              f"untriggered events flagged {flagged:.2%}")
    print(f"in-process on {args.baseline_events} events: framewatch pipeline {statistics.median(ours):.0f} events/s, "
          f"whole-text embedding baseline {statistics.median(naive):.1f} events/s, "
          f"ratio {statistics.median(ours) / statistics.median(naive):.1f}x")
    print(json.dumps({"e2e_events_per_s": rates, "pipeline_events_per_s": ours, "baseline_events_per_s": naive}))


if __name__ == "__main__":
    main()
