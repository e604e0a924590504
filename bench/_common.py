"""What the end-to-end benchmarks share: the events/s of a real sidecar process consuming a backlog.

One definition of the figure, so the numbers of ``bench_e2e.py``, ``bench_otlp.py`` and ``bench_shared_triage.py``
compare: the sidecar is started on a topic whose backlog holds ``n`` events, and the rate is counted from its first
processed batch (model loading, the group join and the first fetch are start-up, not throughput) to the last event.
Here and not in ``tests/harness.py``: tests assert behaviour, never speed.
"""

from __future__ import annotations

import time

from tests.harness import SidecarProcess


def sidecar_rate(sidecar: SidecarProcess, n: int) -> float:
    """Start ``sidecar``, wait until it has processed ``n`` events, stop it; events/s after its first batch."""
    s = sidecar.start()
    try:
        t_first, first_n = None, 0.0
        while True:
            done, now = s.processed(), time.monotonic()
            if done == done and done > 0 and t_first is None:  # done == done: not NaN (no /metrics yet)
                t_first, first_n = now, done
            if done >= n:
                return (n - first_n) / (now - t_first) if t_first and now > t_first else float("nan")
            if s.proc is not None and s.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited: see {s.log_path}")
            time.sleep(0.1)
    finally:
        s.terminate()
        s.stop()
