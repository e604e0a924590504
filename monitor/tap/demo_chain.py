"""``framewatch demo --via-tap``: requests -> tap -> Kafka, instead of a producer writing events itself.

Starts the replay upstream (an OpenAI-compatible server answering with replayed responses, standing in for
an inference server) and ``framewatch tap`` in front of it, each as a child process, and drives the tap with
the real ``openai`` client: chat and text completions, streaming and not, with the shared system prompts
of :mod:`monitor._replay`. The sidecar then sees exactly what the tap published.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from monitor import _replay as replay
from monitor._tansu import free_port, wait_http

WORKERS = 8  # openai clients in flight: a handful of users of one inference server


@dataclass
class TapChain:
    bootstrap: str
    workdir: Path
    tap_port: int = 8001
    metrics_port: int = 9465
    upstream_port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[BinaryIO] = field(default_factory=list)  # the children's log files, closed by stop()

    @property
    def tap_url(self) -> str:
        return f"http://127.0.0.1:{self.tap_port}"

    def start(self) -> TapChain:
        up_log = open(self.workdir / "upstream.log", "ab")  # noqa: SIM115 - closed by stop()
        self.logs.append(up_log)
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "monitor.tap.replay_upstream", "--port", str(self.upstream_port)],
            stdout=up_log, stderr=subprocess.STDOUT))
        env = {**os.environ, "FRAMEWATCH_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "FRAMEWATCH_TAP_HOST": "127.0.0.1",
               "FRAMEWATCH_TAP_PORT": str(self.tap_port), "FRAMEWATCH_TAP_METRICS_PORT": str(self.metrics_port),
               "FRAMEWATCH_TAP_UPSTREAM": f"http://127.0.0.1:{self.upstream_port}"}
        tap_log = open(self.workdir / "tap.log", "ab")  # noqa: SIM115 - closed by stop()
        self.logs.append(tap_log)
        self.procs.append(subprocess.Popen([sys.executable, "-m", "monitor.cli", "tap"], env=env,
                                           stdout=tap_log, stderr=subprocess.STDOUT))
        try:
            wait_http(f"http://127.0.0.1:{self.upstream_port}/health")
            wait_http(f"http://127.0.0.1:{self.metrics_port}/readyz")
        except BaseException:
            self.stop()  # the caller never got a chain to stop: leave no child running
            raise
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        while self.logs:
            self.logs.pop().close()


def drive(tap_url: str, rate: float, stop: threading.Event) -> None:
    """Send completions through the tap at about ``rate`` per second until ``stop``."""
    import openai  # the [demo] extra

    rows = replay.load_rows()
    lock = threading.Lock()
    state = {"sent": 0}
    start = time.monotonic()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with openai.OpenAI(api_key="sk-demo-not-a-real-key", base_url=tap_url + "/v1", max_retries=0) as client:
            while not stop.is_set():
                with lock:
                    state["sent"] += 1
                    ahead = state["sent"] / rate - (time.monotonic() - start)
                if ahead > 0 and stop.wait(ahead):
                    return
                row = rng.choice(rows)
                try:
                    _one(client, row, rng)
                except openai.OpenAIError as exc:
                    print(f"request through the tap failed: {type(exc).__name__}", flush=True)
                    stop.wait(1.0)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _one(client: Any, row: replay.ReplayRow, rng: random.Random) -> None:
    system = rng.choice(replay.SYSTEM_PROMPTS)
    stream = rng.random() < 0.5
    if rng.random() < 0.8:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": row.prompt}]
        result = client.chat.completions.create(model=row.model, messages=messages, stream=stream)
    else:
        result = client.completions.create(model=row.model, prompt=row.prompt, stream=stream)
    if stream:
        for _chunk in result:
            pass
