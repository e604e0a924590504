"""Cost of the shared triage view on the hot path: sidecar throughput with the evidence stream on vs off.

Same broker, same backlog of replayed events, a fresh consumer group per run, runs alternating between
``FRAMEWATCH_TRIAGE_SHARED=true`` (each batch's evidence written and acknowledged before the commit, and the
evidence and flagged topics followed) and ``false`` (evidence merged in process). Reports events/s per mode
and the ratio of medians (compare ratios, not absolute figures: the machine is shared).

    .venv/bin/python bench/bench_shared_triage.py [--events 6000] [--runs 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_e2e import TOPIC, events  # noqa: E402
from monitor._tansu import LocalBroker  # noqa: E402
from tests.harness import SidecarProcess, produce  # noqa: E402


def run(broker: LocalBroker, n: int, name: str, shared: bool, workdir: Path) -> float:
    s = SidecarProcess(broker.bootstrap, workdir / f"{name}.log", group_id=name,
                       extra_env={"FRAMEWATCH_LOG_LEVEL": "warning", "FRAMEWATCH_TRIAGE_SHARED": str(shared).lower(),
                                  "FRAMEWATCH_EVIDENCE_TOPIC": f"{name}.evidence",
                                  "FRAMEWATCH_FLAGGED_TOPIC": f"{name}.flagged"}).start()
    try:
        t_first, first_n = None, 0.0
        while True:
            done, now = s.processed(), time.monotonic()
            if done == done and done > 0 and t_first is None:
                t_first, first_n = now, done
            if done >= n:
                return (n - first_n) / (now - t_first) if t_first and now > t_first else float("nan")
            if s.proc is not None and s.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited: see {s.log_path}")
            time.sleep(0.1)
    finally:
        s.terminate()
        s.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=6000)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = LocalBroker(log_path=Path(tmp) / "broker.log").start()
        try:
            topics = {TOPIC: 3}
            for i in range(args.runs):
                for mode in ("shared", "local"):
                    topics.update({f"{mode}{i}.evidence": 1, f"{mode}{i}.flagged": 3})
            broker.create_topics(topics)
            produce(broker.bootstrap, TOPIC, events(args.events, seed=1))
            rates: dict[str, list[float]] = {"shared": [], "local": []}
            for i in range(args.runs):
                for mode in ("shared", "local") if i % 2 == 0 else ("local", "shared"):
                    rate = run(broker, args.events, f"{mode}{i}", mode == "shared", Path(tmp))
                    rates[mode].append(rate)
                    print(f"run {i} {mode}: {rate:,.0f} events/s", flush=True)
        finally:
            broker.stop()
    shared, local = statistics.median(rates["shared"]), statistics.median(rates["local"])
    print(f"median events/s: shared view {shared:,.0f}, per-replica view {local:,.0f}; ratio {shared / local:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
