"""The tap's test parts, each a real process observed from outside: the replay upstream (standing in for
vLLM, which cannot run here) and ``framewatch tap`` itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from monitor._tansu import free_port
from tests.harness import REPO, wait_for


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _end(proc: subprocess.Popen[bytes] | None) -> None:
    """Kill a part that is still running and reap it (no zombie, no "still running" ResourceWarning)."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@dataclass
class UpstreamProcess:
    """``python -m monitor.tap.replay_upstream``: an OpenAI-compatible server answering replayed responses."""

    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    _log: BinaryIO | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> UpstreamProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "monitor.tap.replay_upstream", "--port", str(self.port)],
                                     cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: _get(self.url + "/health")[0] == 200, 30, "replay upstream /health")
        except BaseException:
            self.stop()  # a fixture whose start fails never reaches its teardown: leave no process or file open
            raise
        return self

    def stats(self) -> dict[str, int]:
        status, text = _get(self.url + "/_replay/stats")
        assert status == 200, status
        return dict(json.loads(text))

    def stop(self) -> None:
        _end(self.proc)
        if self._log is not None:
            self._log.close()


@dataclass
class TapProcess:
    """``framewatch tap`` in front of ``upstream``, publishing to ``bootstrap``."""

    bootstrap: str
    upstream: str
    log_path: Path
    topic: str = "llm.inferences"
    extra_env: dict[str, str] | None = None
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    _log: BinaryIO | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TapProcess:
        env = {**os.environ, "FRAMEWATCH_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "FRAMEWATCH_KAFKA_TOPIC": self.topic,
               "FRAMEWATCH_TAP_HOST": "127.0.0.1", "FRAMEWATCH_TAP_PORT": str(self.port),
               "FRAMEWATCH_TAP_METRICS_PORT": str(self.metrics_port), "FRAMEWATCH_TAP_UPSTREAM": self.upstream,
               **(self.extra_env or {})}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "tap"], env=env, cwd=REPO,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: _get(f"http://127.0.0.1:{self.metrics_port}/readyz")[0] == 200, 30, "tap /readyz")
        except BaseException:
            self.stop()
            raise
        return self

    def metric(self, name: str, labels: str | None = None) -> float:
        """Sum of a metric's samples (optionally only those whose label text contains ``labels``)."""
        status, text = _get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        assert status == 200, f"tap /metrics answered {status}"
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {" and (labels is None or labels in line):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def dropped(self, reason: str) -> float:
        return self.metric("framewatch_tap_events_dropped_total", f'reason="{reason}"')

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        _end(self.proc)
        if self._log is not None:
            self._log.close()
