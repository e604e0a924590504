"""Shared triage view: candidate latency with one vs two replicas, and the cost on the hot path.

``--part latency`` (issue 20's closing figures): one replica (group ``one``) and two replicas in one group
(``two``), and optionally two replicas with per-pod views (``--per-pod``, ``FRAMEWATCH_TRIAGE_SHARED=false``,
the old behaviour), all consume the same paced stream on a 4-partition topic: rounds of 50 events (40 plain,
1 in 2 rounds one of them failing; 10 with the unregistered framing "Answer as a pirate would.", 2 failing),
after two failing framed events that found the candidate. Each pod's ``/v1/candidates`` is polled; reported per
setup: the events its view had merged when the candidate was first listed (the statistical latency: what the
evidence had to show; for a pair the later of its two pods, for per-pod views the pod's own share), the events
produced by then and the seconds since the stream started (wall-clock latency: when the stream outpaces one
replica, two replicas also consume it faster). The baseline is the single replica of the same run; failures are
decided by the real classifier, framings by the real detector.

``--part throughput``: sidecar events/s with the evidence stream on (each batch's evidence written and
acknowledged before the commit, and the evidence and flagged topics followed) vs off (evidence merged in
process), same backlog, a fresh group per run, modes alternating. Compare ratios, not absolute figures: the
machine is shared.

    .venv/bin/python bench/bench_shared_triage.py [--part all|latency|throughput] [--runs 2] [--rate 100]
                                                  [--per-pod] [--events 6000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import sidecar_rate  # noqa: E402
from bench.bench_e2e import TOPIC, events  # noqa: E402
from monitor._tansu import LocalBroker  # noqa: E402
from tests.harness import SidecarProcess, produce  # noqa: E402

LATENCY_TOPIC, LATENCY_PARTITIONS = "latency.inferences", 4
MAX_ROUNDS = 30  # 1,500 events: ten times what one replica needs


# --- throughput: evidence stream on vs off ------------------------------------------------------------------

def run(broker: LocalBroker, n: int, name: str, shared: bool, workdir: Path) -> float:
    return sidecar_rate(SidecarProcess(
        broker.bootstrap, workdir / f"{name}.log", group_id=name,
        extra_env={"FRAMEWATCH_LOG_LEVEL": "warning", "FRAMEWATCH_TRIAGE_SHARED": str(shared).lower(),
                   "FRAMEWATCH_EVIDENCE_TOPIC": f"{name}.evidence", "FRAMEWATCH_FLAGGED_TOPIC": f"{name}.flagged",
                   "FRAMEWATCH_REGISTRY_TOPIC": f"{name}.registry"}), n)


def throughput(args: argparse.Namespace, tmp: Path) -> None:
    broker = LocalBroker(log_path=tmp / "broker-throughput.log").start()
    rates: dict[str, list[float]] = {"shared": [], "local": []}
    try:
        topics = {TOPIC: 3}
        for i in range(args.runs):
            for mode in ("shared", "local"):
                topics.update({f"{mode}{i}.evidence": 1, f"{mode}{i}.flagged": 3, f"{mode}{i}.registry": 1})
        broker.create_topics(topics)
        produce(broker.bootstrap, TOPIC, events(args.events, seed=1))
        for i in range(args.runs):
            for mode in ("shared", "local") if i % 2 == 0 else ("local", "shared"):
                rate = run(broker, args.events, f"{mode}{i}", mode == "shared", tmp)
                rates[mode].append(rate)
                print(f"throughput run {i} {mode}: {rate:,.0f} events/s", flush=True)
    finally:
        broker.stop()
    shared, local = statistics.median(rates["shared"]), statistics.median(rates["local"])
    print(f"median events/s: shared view {shared:,.0f}, per-replica view {local:,.0f}; ratio {shared / local:.2f}")


# --- candidate latency: one replica vs two ------------------------------------------------------------------

@dataclass
class Listed:
    produced: int  # events produced when the candidate was first listed
    merged: int  # events the pod's view had merged then
    seconds: float  # since the stream started
    significant_after: int = 0  # unmatched events its view had merged when it logged the candidate significant


@dataclass
class Setup:
    name: str
    pods: list[SidecarProcess]
    listed: dict[int, Listed] = field(default_factory=dict)  # pod index -> when it first listed the candidate

    @property
    def done(self) -> bool:
        return len(self.listed) == len(self.pods)

    def result(self) -> Listed | None:
        """The later of the pods: the answer is only the same on every pod once all of them list it."""
        if not self.done:
            return None
        return max(self.listed.values(), key=lambda x: (x.produced, x.seconds))


def candidates(pod: SidecarProcess) -> tuple[list[dict[str, Any]], int]:
    from tests.test_triage import http

    status, body = http(pod, "GET", "/v1/candidates")
    if status != 200:
        return [], -1
    return body["candidates"], int(body["evidence"]["events_merged"])


def stream(pools: Any, seed: int) -> list[tuple[str, bytes]]:
    """The founding failures, then rounds of 50 events: the mix of tests/integration/triage/test_shared_view.py."""
    from tests.test_triage import PIRATE, event, round_of_traffic

    rng = random.Random(seed)
    out = [(f"s{seed}-w0-{i}", event(pools, rng, suffix=PIRATE, failing=True, event_id=f"s{seed}-w0-{i}"))
           for i in range(2)]
    for wave in range(1, MAX_ROUNDS + 1):
        out += [(f"s{seed}-{k}", v) for k, v in round_of_traffic(pools, rng, wave, base=40, base_failing=wave % 2,
                                                                 pirate=10, pirate_failing=2)]
    return out


def latency_run(broker: LocalBroker, pools: Any, registry: Path, run_no: int, args: argparse.Namespace,
                tmp: Path) -> dict[str, Listed | None]:
    from kafka import KafkaProducer

    from tests.conftest import MODEL_DIR

    topic = f"{LATENCY_TOPIC}{run_no}"
    layout = [("one", 1, True), ("two", 2, True)] + ([("per_pod", 2, False)] if args.per_pod else [])
    created = {topic: LATENCY_PARTITIONS, f"{topic}.dlq": 1}
    for name, _, _ in layout:
        created.update({f"{name}{run_no}.flagged": LATENCY_PARTITIONS, f"{name}{run_no}.evidence": 1,
                        f"{name}{run_no}.registry": 1})
    broker.create_topics(created)
    setups: list[Setup] = []
    try:
        for name, replicas, shared in layout:
            group = f"{name}{run_no}"
            pods = [SidecarProcess(broker.bootstrap, tmp / f"{group}-{i}.log", group_id=group, topic=topic,
                                   dlq=f"{topic}.dlq",
                                   extra_env={"FRAMEWATCH_REGISTRY_PATH": str(registry),
                                              "FRAMEWATCH_MODEL_DIR": str(MODEL_DIR),
                                              "FRAMEWATCH_LOG_LEVEL": "warning",
                                              "FRAMEWATCH_TRIAGE_SHARED": str(shared).lower(),
                                              "FRAMEWATCH_FLAGGED_TOPIC": f"{group}.flagged",
                                              "FRAMEWATCH_EVIDENCE_TOPIC": f"{group}.evidence",
                                              "FRAMEWATCH_REGISTRY_TOPIC": f"{group}.registry"}).start()
                    for i in range(replicas)]
            setups.append(Setup(name, pods))
        for s in setups:
            for pod in s.pods:
                pod.wait_ready(180)
        values = stream(pools, seed=20 + run_no)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5, acks="all")
        try:
            sent, start = 0, time.monotonic()
            deadline = None
            while not all(s.done for s in setups):
                now = time.monotonic()
                due = min(len(values), int((now - start) * args.rate) + 1)
                for key, value in values[sent:due]:
                    producer.send(topic, key=key.encode(), value=value)
                if due > sent:
                    producer.flush(timeout=30)
                    sent = due
                for s in setups:
                    for i, pod in enumerate(s.pods):
                        if i in s.listed:
                            continue
                        found, merged = candidates(pod)
                        if found:
                            s.listed[i] = Listed(sent, merged, time.monotonic() - start)
                if sent == len(values):
                    deadline = deadline or time.monotonic() + 30  # then the stream is over: the rest never list it
                    if time.monotonic() > deadline:
                        break
                time.sleep(0.1)
        finally:
            producer.close(timeout=10)
        for s in setups:
            for i, pod in enumerate(s.pods):
                logged = pod.log_events("emerging_framing_significant")
                if i in s.listed and logged:
                    s.listed[i].significant_after = int(logged[0]["unmatched_events_seen"])  # type: ignore[call-overload]
        return {s.name: s.result() for s in setups}
    finally:
        for s in setups:
            for pod in s.pods:
                pod.stop()


def latency(args: argparse.Namespace, tmp: Path) -> None:
    from tests.test_triage import load_pools, writable_registry

    pools = load_pools()
    registry = writable_registry(tmp)
    broker = LocalBroker(log_path=tmp / "broker-latency.log").start()
    results: list[dict[str, Listed | None]] = []
    try:
        for i in range(args.runs):
            out = latency_run(broker, pools, registry, i, args, tmp)
            results.append(out)
            print(f"latency run {i} ({args.rate:.0f} events/s): " + "; ".join(
                f"{name}: " + (f"listed after {r.produced} produced / {r.merged} merged, {r.seconds:.1f} s "
                               f"(significant after {r.significant_after} unmatched)"
                               if r else "not listed") for name, r in out.items()), flush=True)
    finally:
        broker.stop()
    one = [r["one"] for r in results if r.get("one")]
    if not one:
        print("the single replica never listed the candidate: no baseline")
        return
    base_events = statistics.median(r.merged for r in one)  # type: ignore[union-attr]
    base_s = statistics.median(r.seconds for r in one)  # type: ignore[union-attr]
    for name in results[0]:
        got = [r[name] for r in results if r.get(name)]
        if not got:
            print(f"{name}: not listed within {MAX_ROUNDS * 50 + 2} events in any run")
            continue
        ev_med = statistics.median(r.merged for r in got)  # type: ignore[union-attr]
        s_med = statistics.median(r.seconds for r in got)  # type: ignore[union-attr]
        sig_med = statistics.median(r.significant_after for r in got)  # type: ignore[union-attr]
        produced = statistics.median(r.produced for r in got)  # type: ignore[union-attr]
        print(f"median {name}: candidate listed once its view had merged {ev_med:.0f} events "
              f"({ev_med / base_events:.2f}x one replica), {s_med:.1f} s after the stream started "
              f"({s_med / base_s:.2f}x, {produced:.0f} events produced by then), significant after {sig_med:.0f} "
              "unmatched events merged; "
              f"listed in {len(got)}/{len(results)} runs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "latency", "throughput"), default="all")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--events", type=int, default=6000, help="throughput: backlog size")
    ap.add_argument("--rate", type=float, default=100.0, help="latency: events/s produced")
    ap.add_argument("--per-pod", action="store_true", help="latency: also two replicas with per-pod views")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("all", "latency"):
            latency(args, Path(tmp))
        if args.part in ("all", "throughput"):
            throughput(args, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
