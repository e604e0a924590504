"""Latency the tap adds, and its CPU per 1,000 requests, against a direct connection in the same run.

Parts, all on loopback: a Tansu broker, the replay upstream (``monitor.tap.replay_upstream``, standing in for
vLLM: it waits ``--delay-s`` before answering, or ``--chunk-delay-s`` between stream chunks, like a model
generating), ``framewatch tap`` in front of it publishing every exchange, and a lean asyncio client keeping
``--concurrency`` requests in flight on keep-alive connections (clients start spread over 100 ms and answer times
vary, so that the 50 do not move in lockstep). Rounds alternate direct and tapped phases so drift on a shared machine
hits both; latencies are pooled per path and the added latency is tapped minus direct at p50 and p99
(non-streaming: whole response; streaming: first byte and last byte). CPU is the tap process's user+system
time during its phases (/proc/<pid>/stat), per 1,000 requests. Last, the broker is stopped and the
non-streaming comparison runs again: a broker outage must not slow a user's request (docs/tap.md).

    .venv/bin/python bench/bench_tap.py --requests 400 --stream-requests 150 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from monitor import _replay as replay  # noqa: E402
from monitor._tansu import LocalBroker, free_port, wait_http  # noqa: E402

TOPIC = "llm.inferences"
STAGGER_S = 0.1


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bodies(n: int, stream: bool, args: argparse.Namespace, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    rows = replay.load_rows()
    out = []
    for i in range(n):
        row = rng.choice(rows)
        # ``user`` makes every body unique; the replayed answer is cut at --max-words words.
        body: dict[str, object] = {"model": "bench", "messages": [{"role": "user", "content": row.prompt}],
                                   "user": f"bench-{seed}-{i}", "replay_max_words": args.max_words}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True},
                     "replay_chunk_delay_s": args.chunk_delay_s}
        else:
            # Answer times vary as a model's do (uniform 0.5-1.5x): a fixed delay would keep 50 closed-loop
            # clients in lockstep, every request arriving in the same millisecond as 49 others.
            body["replay_delay_s"] = round(args.delay_s * rng.uniform(0.5, 1.5), 4)
        out.append(json.dumps(body).encode())
    return out


class _Reader(asyncio.Protocol):
    """The smallest HTTP/1.1 response reader that can time first and last body bytes: the load generator shares
    the two cores with the tap and the upstream, so it must cost far less per chunk than either (an httpx client
    at 50 streams in flight spent more CPU than the tap, and its scheduling delays landed in both paths' p99)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.first = 0.0
        self.closed = False

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def more(self) -> None:
        if self.closed:
            raise ConnectionError("server closed the connection")
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter


async def _exchange(reader: _Reader, transport: asyncio.Transport, request: bytes) -> tuple[int, float]:
    """Send one request; read its response to the end (content-length or chunked). (status, first body byte)."""
    transport.write(request)
    buf = reader.buf
    while (end := buf.find(b"\r\n\r\n")) < 0:
        await reader.more()
    head = bytes(buf[:end]).decode("latin-1").lower()
    del buf[:end + 4]
    status = int(head.split(" ", 2)[1])
    first = 0.0
    if "transfer-encoding: chunked" in head:
        while True:  # chunk-size line, data, CRLF; size 0 ends the body (no trailers from these servers)
            while (eol := buf.find(b"\r\n")) < 0:
                await reader.more()
            size = int(bytes(buf[:eol]).split(b";")[0], 16)
            while len(buf) < eol + 2 + size + 2:
                await reader.more()
            first = first or time.perf_counter()
            del buf[:eol + 2 + size + 2]
            if size == 0:
                return status, first
    length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
    while len(buf) < length:
        await reader.more()
        first = first or time.perf_counter()
    del buf[:length]
    return status, first or time.perf_counter()


async def phase(base: str, payloads: list[bytes], concurrency: int, stream: bool) -> list[tuple[float, float]]:
    """(time to first body byte, time to last byte) per request, ``concurrency`` keep-alive connections busy."""
    host, port = base.removeprefix("http://").split(":")
    out: list[tuple[float, float]] = []
    queue = list(reversed(payloads))
    loop = asyncio.get_running_loop()

    async def worker(k: int) -> None:
        transport, reader = await loop.create_connection(_Reader, host, int(port))
        await asyncio.sleep(k * STAGGER_S / concurrency)  # clients start spread over STAGGER_S, not all at once
        try:
            while queue:
                body = queue.pop()
                request = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: "
                           f"application/json\r\nauthorization: Bearer sk-bench\r\ncontent-length: {len(body)}"
                           "\r\n\r\n").encode() + body
                t0 = time.perf_counter()
                status, first = await _exchange(reader, transport, request)
                end = time.perf_counter()
                assert status == 200, status
                out.append((first - t0, end - t0))
        finally:
            transport.close()

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return out


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=3) as resp:
        total = 0.0
        for line in resp.read().decode().splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="non-streaming requests per phase")
    parser.add_argument("--stream-requests", type=int, default=150, help="streaming requests per phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--delay-s", type=float, default=0.1, help="upstream time to answer (non-streaming)")
    parser.add_argument("--chunk-delay-s", type=float, default=0.02, help="upstream time between stream chunks")
    parser.add_argument("--max-words", type=int, default=60, help="replayed responses up to this many words")
    parser.add_argument("--outage-requests", type=int, default=200,
                        help="non-streaming requests per phase with the broker stopped (0: skip that part)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-tap-"))
    broker = LocalBroker(log_path=work / "broker.log").start()
    procs: list[subprocess.Popen[bytes]] = []
    up_log, tap_log = open(work / "upstream.log", "wb"), open(work / "tap.log", "wb")  # noqa: SIM115
    try:
        broker.create_topics({TOPIC: 1})
        up_port, tap_port, metrics_port = free_port(), free_port(), free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "monitor.tap.replay_upstream", "--port", str(up_port)],
                                      cwd=REPO, stdout=up_log, stderr=subprocess.STDOUT))
        env = {**os.environ, "FRAMEWATCH_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "FRAMEWATCH_TAP_HOST": "127.0.0.1",
               "FRAMEWATCH_TAP_PORT": str(tap_port), "FRAMEWATCH_TAP_METRICS_PORT": str(metrics_port),
               "FRAMEWATCH_TAP_UPSTREAM": f"http://127.0.0.1:{up_port}"}
        tap = subprocess.Popen([sys.executable, "-m", "monitor.cli", "tap"], cwd=REPO, env=env,
                               stdout=tap_log, stderr=subprocess.STDOUT)
        procs.append(tap)
        direct, tapped = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{tap_port}"
        wait_http(direct + "/health")
        wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        asyncio.run(phase(tapped, bodies(50, False, args, 99), args.concurrency, False))  # warm both paths
        asyncio.run(phase(direct, bodies(50, False, args, 98), args.concurrency, False))
        print(f"bench_tap: concurrency {args.concurrency}, {args.rounds} rounds; upstream answers after "
              f"{args.delay_s * 1000:.0f} ms (non-streaming) or streams one word per {args.chunk_delay_s * 1000:.0f} ms"
              f" (<= {args.max_words} words); tap publishes every exchange to Tansu")
        for stream, n in ((False, args.requests), (True, args.stream_requests)):
            compare(direct, tapped, tap.pid, stream, n, args, "streaming" if stream else "non-streaming")
        time.sleep(2)
        published = metric(metrics_url, "framewatch_tap_events_published_total")
        dropped = metric(metrics_url, "framewatch_tap_events_dropped_total")
        print(f"\nevents published {published:.0f}, dropped {dropped:.0f}")
        if args.outage_requests:
            # The "broker stopped: requests still succeed at normal latency", measured here rather than
            # asserted in a test: the same comparison with no broker behind the tap.
            broker.stop()
            compare(direct, tapped, tap.pid, False, args.outage_requests, args, "non-streaming, broker stopped")
            time.sleep(2)
            drops = metric(metrics_url, "framewatch_tap_events_dropped_total") - dropped
            print(f"  events dropped while the broker was down: {drops:.0f} "
                  f"(of {args.rounds * args.outage_requests} exchanges; the queue holds the rest until it is full)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        up_log.close()
        tap_log.close()
        broker.stop()
    return 0


def compare(direct: str, tapped: str, tap_pid: int, stream: bool, n: int, args: argparse.Namespace,
            kind: str) -> None:
    """Alternating direct and tapped phases of ``n`` requests; print added latency and the tap's CPU."""
    lat: dict[str, list[tuple[float, float]]] = {"direct": [], "tap": []}
    cpu, count = 0.0, 0
    for r in range(args.rounds):
        for name, base in (("direct", direct), ("tap", tapped)) if r % 2 == 0 else (("tap", tapped),
                                                                                   ("direct", direct)):
            payloads = bodies(n, stream, args, seed=1000 * r + stream)
            before = cpu_seconds(tap_pid)
            lat[name] += asyncio.run(phase(base, payloads, args.concurrency, stream))
            if name == "tap":
                cpu += cpu_seconds(tap_pid) - before
                count += n
    print(f"\n{kind}: {count} requests per path")
    for label, idx in (("first byte", 0), ("last byte", 1)) if stream else (("response", 1),):
        d = [x[idx] * 1000 for x in lat["direct"]]
        t = [x[idx] * 1000 for x in lat["tap"]]
        print(f"  {label:10s} direct p50 {pct(d, 50):8.2f} ms  p99 {pct(d, 99):8.2f} ms | tap p50 "
              f"{pct(t, 50):8.2f} ms  p99 {pct(t, 99):8.2f} ms | added p50 {pct(t, 50) - pct(d, 50):+6.2f} ms"
              f"  p99 {pct(t, 99) - pct(d, 99):+6.2f} ms")
    print(f"  tap CPU: {1000 * cpu / count:.2f} s per 1,000 requests")


if __name__ == "__main__":
    raise SystemExit(main())
