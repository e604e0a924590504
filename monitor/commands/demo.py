"""``framewatch demo``: everything on loopback, nothing to install beyond the package.

Starts a local Kafka-compatible broker (Tansu), the sidecar (``framewatch run`` as a child process, exactly
as in production), and a producer replaying real prompts and responses of fine-tuned models; prints a
live summary read from the sidecar's own ``/metrics``. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from monitor import _replay as replay
from monitor._tansu import LocalBroker, free_port

TOPIC, DLQ = "llm.inferences", "llm.inferences.dlq"
DEFAULT_RATE = 300.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="events per second to replay (default 300)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until Ctrl-C)")
    parser.add_argument("--http-port", type=int, default=9464, help="sidecar HTTP port (default 9464)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--malformed-share", type=float, default=0.01, help="share of malformed events (DLQ demo)")
    parser.add_argument("--via-tap", action="store_true",
                        help="no producer: the openai client sends completions through `framewatch tap` (port 8001)"
                             " to a replay server; the tap publishes the events (--rate: requests/s, default 20)")


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"framewatch-demo-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    broker = LocalBroker(port=free_port(), log_path=workdir / "broker.log").start()
    sidecar: subprocess.Popen[bytes] | None = None
    chain = None  # --via-tap: the replay upstream and the tap
    try:
        broker.create_topics({TOPIC: args.partitions, DLQ: 1})
        print(f"broker    : Tansu on {broker.bootstrap} (memory only), topics {TOPIC} x{args.partitions}, {DLQ}")
        env = {**os.environ, "FRAMEWATCH_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
               "FRAMEWATCH_HTTP_HOST": "127.0.0.1", "FRAMEWATCH_HTTP_PORT": str(args.http_port),
               "FRAMEWATCH_KAFKA_SESSION_TIMEOUT_MS": "6000"}
        log_file = open(workdir / "sidecar.log", "ab")  # noqa: SIM115
        sidecar = subprocess.Popen([sys.executable, "-m", "monitor.cli", "run"], env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT)
        metrics_url = f"http://127.0.0.1:{args.http_port}/metrics"
        print(f"sidecar   : pid {sidecar.pid}, logs {workdir / 'sidecar.log'}")
        print(f"metrics   : {metrics_url}   status: http://127.0.0.1:{args.http_port}/v1/status")
        if args.via_tap:
            from monitor.tap.demo_chain import TapChain, drive

            chain = TapChain(broker.bootstrap, workdir).start()
            print(f"tap       : {chain.tap_url}/v1 -> replay upstream :{chain.upstream_port}; tap metrics "
                  f"http://127.0.0.1:{chain.metrics_port}/metrics; logs {workdir / 'tap.log'}")
            rate = args.rate if args.rate != DEFAULT_RATE else 20.0
            producer = threading.Thread(target=drive, args=(chain.tap_url, rate, stop), daemon=True)
        else:
            producer = threading.Thread(target=_produce, args=(broker.bootstrap, args, stop), daemon=True)
        producer.start()
        _summarise(metrics_url, stop, args.duration, sidecar)
    finally:
        stop.set()
        if chain is not None:
            chain.stop()
        if sidecar and sidecar.poll() is None:
            sidecar.send_signal(signal.SIGTERM)
            try:
                sidecar.wait(timeout=20)
            except subprocess.TimeoutExpired:
                sidecar.kill()
        broker.stop()
        print("demo stopped: sidecar and broker shut down")
    return 0


def _produce(bootstrap: str, args: argparse.Namespace, stop: threading.Event) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1)
    stream = replay.events(replay.load_rows(), seed=1, malformed_share=args.malformed_share)
    start, sent = time.monotonic(), 0
    while not stop.is_set():
        event_id, value = next(stream)
        producer.send(TOPIC, value=value, key=event_id.encode())
        sent += 1
        ahead = sent / args.rate - (time.monotonic() - start)
        if ahead > 0:
            stop.wait(ahead)
    producer.flush(timeout=10)
    producer.close(timeout=5)


def _scrape(url: str) -> dict[str, float]:
    values: dict[str, float] = {}
    with urllib.request.urlopen(url, timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            if name.endswith("_bucket"):
                continue
            key = name
            if name in ("framewatch_events_total", "framewatch_failures_total"):
                key = f"{name}|triggered" if 'framing="none"' not in name_labels else f"{name}|none"
            values[key] = values.get(key, 0.0) + float(value)
    return values


def _summarise(url: str, stop: threading.Event, duration: float, sidecar: subprocess.Popen[bytes]) -> None:
    began = time.monotonic()
    last_t, last_n = began, 0.0
    print("waiting for the sidecar to join the consumer group ...")
    while not stop.wait(2.0):
        if sidecar.poll() is not None:
            print(f"sidecar exited with code {sidecar.returncode}; see its log")
            return
        try:
            v = _scrape(url)
        except OSError:
            continue
        now, n = time.monotonic(), v.get("framewatch_events_processed_total", 0.0)
        rate = (n - last_n) / (now - last_t)
        last_t, last_n = now, n
        trig_n = v.get("framewatch_events_total|triggered", 0)
        trig_f = v.get("framewatch_failures_total|triggered", 0)
        base_n, base_f = v.get("framewatch_events_total|none", 0), v.get("framewatch_failures_total|none", 0)
        dead, lag = v.get("framewatch_events_dead_lettered_total", 0), v.get("framewatch_consumer_lag", 0)
        print(f"[{now - began:6.0f}s] processed {n:8.0f} ({rate:6.1f}/s)  dead-lettered {dead:5.0f}  lag {lag:6.0f}"
              f"  failure rate: triggered {_pct(trig_f, trig_n)} of {trig_n:.0f},"
              f" untriggered {_pct(base_f, base_n)} of {base_n:.0f}", flush=True)
        if duration and now - began >= duration:
            return


def _pct(k: float, n: float) -> str:
    return f"{100 * k / n:5.1f}%" if n else "   - "
