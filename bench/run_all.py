"""Run every benchmark once with short arguments and print a summary: ``make bench``.

Each script runs in its own process, in turn (they share two CPU cores with everything else, so never in
parallel), with arguments that keep the whole set to a few minutes. The numbers are then indicative only:
each script's own defaults (``--full``) are what the figures in the docs come from. A failing script does
not stop the others; the exit code is the number of scripts that failed.

    .venv/bin/python bench/run_all.py [--full] [--only scoring,framing]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent

#: name -> (script, short arguments). In order of cost: a broken set-up shows in the cheap ones first.
BENCHES: dict[str, tuple[str, list[str]]] = {
    "scoring": ("bench_scoring.py", ["--n", "500", "--repeats", "2"]),
    "embedding": ("bench_embedding.py", ["--repeats", "1", "--n", "64", "--tokens", "16,64"]),
    "framing": ("bench_framing.py", ["--runs", "1", "--baseline-n", "100"]),
    "otlp": ("bench_otlp.py", ["--events", "1000", "--runs", "1"]),
    "e2e": ("bench_e2e.py", ["--events", "1500", "--runs", "1", "--baseline-events", "100"]),
    "tap": ("bench_tap.py", ["--requests", "200", "--stream-requests", "60", "--rounds", "1"]),
    "shared_triage": ("bench_shared_triage.py", ["--part", "latency", "--runs", "1"]),
}


@dataclass
class Outcome:
    name: str
    returncode: int
    seconds: float
    summary: str


def run(name: str, script: str, args: list[str]) -> Outcome:
    cmd = [sys.executable, str(BENCH / script), *args]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=BENCH.parent)
    seconds = time.monotonic() - start
    print(proc.stdout, end="" if proc.stdout.endswith("\n") else "\n", flush=True)
    return Outcome(name, proc.returncode, seconds, _summary(proc.stdout))


def _summary(stdout: str) -> str:
    """The last human-readable line; for a script that prints only a JSON document, its medians and ratios."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    prose = [ln for ln in lines if ln[:1] not in "{}[]\" \t"]  # JSON log lines and dumps are not prose
    if prose:
        return prose[-1].strip()
    try:
        doc = json.loads(stdout)
    except ValueError:
        return lines[-1].strip() if lines else "(no output)"
    if not isinstance(doc, dict):
        return str(doc)[:160]
    return ", ".join(f"{k} {v}" for k, v in doc.items() if "ratio" in k or k.endswith("median")) or str(doc)[:160]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="each script's own default arguments (slow)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHES)}")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHES)}")
    outcomes = [run(n, BENCHES[n][0], [] if args.full else BENCHES[n][1]) for n in names]
    print("\n== summary" + ("" if args.full else " (short runs: indicative only; --full for the documented figures)"))
    for o in outcomes:
        status = "ok" if o.returncode == 0 else f"FAILED (exit {o.returncode})"
        print(f"{o.name:<10} {status:<18} {o.seconds:7.1f} s  {o.summary[:160]}")
    return sum(o.returncode != 0 for o in outcomes)


if __name__ == "__main__":
    sys.exit(main())
