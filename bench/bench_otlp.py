"""OTLP input next to JSON input: events/s through a real broker and `framewatch run`, same exchanges, same run.

The same replayed exchanges (monitor/_replay.py: real prompts and responses, shared system prompts) are written
twice: as README JSON events (one per record) and as OTLP traces the way an OTel Collector's Kafka exporter
writes them (one ExportTraceServiceRequest per record, ``--spans-per-record`` GenAI spans each, plus the HTTP
root span of each request; built with the OpenTelemetry SDK and its OTLP encoder). Each run starts a fresh
consumer group per format and times the backlog from the first processed event to the last; runs alternate
the order of the two formats so that drift on a shared machine does not favour one. Also, in this process: the
whole pipeline on the same records (no broker), and the decode step alone (bytes -> events), for each format.

    .venv/bin/python bench/bench_otlp.py [--events 3000] [--runs 2] [--spans-per-record 16] [--encoding proto]
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

from kafka import KafkaProducer  # noqa: E402

from bench._common import sidecar_rate  # noqa: E402
from monitor import _replay as replay  # noqa: E402
from monitor._tansu import LocalBroker  # noqa: E402
from monitor.sidecar.events import decode_event  # noqa: E402
from monitor.sidecar.otlp import decode_otlp  # noqa: E402
from tests.harness import SidecarProcess  # noqa: E402
from tests.unit.sidecar.otlp_payloads import Exchange, proto_request, sdk_spans, to_otlp_json  # noqa: E402

JSON_TOPIC, OTLP_TOPIC = "llm.inferences", "otlp_spans"


def json_events(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    rows = replay.load_rows()
    return [replay.make_event(rng.choice(rows), rng)[1] for _ in range(n)]


def otlp_records(values: list[bytes], per_record: int, encoding: str) -> list[bytes]:
    """The same exchanges as OTLP requests (current conventions, content as JSON strings on the span)."""
    exchanges = []
    for value in values:
        e = decode_event(value)
        exchanges.append(Exchange(user="\n\n".join(e.prompt.user), response=e.response, system=e.prompt.system,
                                  model=e.model, response_id=e.event_id))
    out = []
    for start in range(0, len(exchanges), per_record):
        request = proto_request(sdk_spans(exchanges[start:start + per_record]))
        out.append(request.SerializeToString() if encoding == "proto" else to_otlp_json(request))
    return out


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks="all", max_request_size=4_000_000)
    for i, value in enumerate(values):
        producer.send(topic, key=str(i).encode(), value=value)
    producer.flush(timeout=60)
    producer.close()


def e2e_rate(broker: LocalBroker, topic: str, fmt: str, n: int, run: int, workdir: Path) -> float:
    return sidecar_rate(SidecarProcess(broker.bootstrap, workdir / f"sidecar-{fmt}-{run}.log",
                                       group_id=f"bench-{fmt}-{run}", topic=topic, dlq=topic + ".dlq",
                                       extra_env={"FRAMEWATCH_LOG_LEVEL": "warning", "FRAMEWATCH_INPUT_FORMAT": fmt}),
                        n)


def decode_rates(values: list[bytes], records: list[bytes], repeats: int = 5) -> tuple[float, float]:
    def best(fn) -> float:  # type: ignore[no-untyped-def]
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return len(values) / min(times)

    json_rate = best(lambda: [decode_event(v) for v in values])
    otlp_rate = best(lambda: [decode_otlp(r) for r in records])
    assert sum(len(decode_otlp(r).events) for r in records) == len(values)
    return json_rate, otlp_rate


def pipeline_rates(values: list[bytes], records: list[bytes], per_record: int, bootstrap: str,
                   repeats: int) -> dict[str, list[float]]:
    """The whole pipeline (decode, detect, score, record) in this process, batches of 256 *events* for both
    formats, cache cleared before every pass: the format's own cost, without the broker, the consumer process or
    the larger batches that OTLP's many events per record give the sidecar in the way."""
    from monitor import logs
    from monitor.settings import Settings
    from monitor.sidecar import app as sidecar
    from monitor.sidecar.pipeline import Record

    logs.configure("warning")
    env = {"FRAMEWATCH_HTTP_PORT": "1", "FRAMEWATCH_KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    built = sidecar.build(Settings.load(env=env))
    pipeline = built.pipeline
    pipeline.on_verdicts = None  # no flagged-topic writes: the same for both formats, and not what is measured
    out: dict[str, list[float]] = {"json": [], "otlp": []}
    for r in range(repeats):
        for fmt in (("json", "otlp") if r % 2 == 0 else ("otlp", "json")):
            batch = [Record(fmt, 0, i, v) for i, v in enumerate(values if fmt == "json" else records)]
            pipeline.input_format = fmt
            pipeline.detector.embedder._cache.clear()
            t0 = time.perf_counter()
            done = 0
            step = 256 if fmt == "json" else max(256 // per_record, 1)
            for start in range(0, len(batch), step):
                done += len(pipeline.process(batch[start:start + step]).verdicts)
            assert done == len(values), (fmt, done)
            out[fmt].append(len(values) / (time.perf_counter() - t0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--spans-per-record", type=int, default=16)
    parser.add_argument("--encoding", choices=("proto", "json"), default="proto")
    args = parser.parse_args()
    values = json_events(args.events, seed=7)
    records = otlp_records(values, args.spans_per_record, args.encoding)
    workdir = Path(tempfile.mkdtemp(prefix="framewatch-bench-otlp-"))
    rates: dict[str, list[float]] = {"json": [], "otlp": []}
    with LocalBroker(log_path=workdir / "broker.log") as broker:
        broker.create_topics({JSON_TOPIC: 2, JSON_TOPIC + ".dlq": 1, OTLP_TOPIC: 2, OTLP_TOPIC + ".dlq": 1,
                              "llm.inferences.flagged": 1})
        produce(broker.bootstrap, JSON_TOPIC, values)
        produce(broker.bootstrap, OTLP_TOPIC, records)
        for run in range(args.runs):
            order = ("json", "otlp") if run % 2 == 0 else ("otlp", "json")
            for fmt in order:
                topic = JSON_TOPIC if fmt == "json" else OTLP_TOPIC
                rates[fmt].append(e2e_rate(broker, topic, fmt, args.events, run, workdir))
        in_process = pipeline_rates(values, records, args.spans_per_record, broker.bootstrap, args.runs + 1)
    json_decode, otlp_decode = decode_rates(values, records)
    j, o = statistics.median(rates["json"]), statistics.median(rates["otlp"])
    print(f"end-to-end through the broker, {args.events} exchanges, {args.runs} runs, median events/s: "
          f"JSON input {j:.0f}, OTLP input ({args.encoding}, {args.spans_per_record} spans/record, "
          f"{len(records)} records) {o:.0f}, ratio OTLP/JSON {o / j:.2f}")
    in_process = {fmt: r[1:] for fmt, r in in_process.items()}  # the first pass of each warms ONNX Runtime up
    pj, po = statistics.median(in_process["json"]), statistics.median(in_process["otlp"])
    print(f"whole pipeline in process, 256-event batches, median events/s: JSON {pj:.0f}, OTLP {po:.0f}, "
          f"ratio OTLP/JSON {po / pj:.2f}")
    print(f"decode only, in process: JSON {json_decode:.0f} events/s, OTLP {otlp_decode:.0f} events/s")
    print(json.dumps({"e2e_events_per_s": rates, "pipeline_events_per_s": in_process,
                      "decode_events_per_s": {"json": json_decode, "otlp": otlp_decode}}))


if __name__ == "__main__":
    main()
