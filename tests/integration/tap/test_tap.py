"""``framewatch tap`` end to end, every part real: the ``openai`` client (sync and streaming) -> the tap ->
an OpenAI-compatible upstream -> Kafka (Tansu) -> ``framewatch run``.

The upstream is ``monitor.tap.replay_upstream``, a small server answering with replayed responses: it stands
in for vLLM, which cannot run on this machine (no GPU, no model weights). It speaks the same HTTP API
(JSON and SSE) and is deterministic, so the tap's answers can be compared byte for byte with the direct path.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from kafka import KafkaConsumer, TopicPartition

from monitor import _replay as replay
from monitor._tansu import LocalBroker
from monitor.settings import PACKAGE_DIR
from tests.conftest import needs_model
from tests.harness import SidecarProcess, wait_for
from tests.integration.tap.procs import TapProcess, UpstreamProcess

pytestmark = [pytest.mark.broker]
TOPIC, DLQ = "llm.inferences", "llm.inferences.dlq"
API_KEY = "sk-test-" + uuid.uuid4().hex  # must reach the upstream, never a log or an event
SCHEMA = json.loads((PACKAGE_DIR / "schemas" / "event.schema.json").read_text())
MAX_BODY = 65_536
UPSTREAM_TIMEOUT_S = 1.5
SENT_PROMPTS: list[str] = []  # every prompt sent in this module: none may show up in the tap's log


# ------------------------------------------------------------------------------------------ the parts


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tap")


@pytest.fixture(scope="module")
def broker(workdir: Path) -> Iterator[LocalBroker]:
    b = LocalBroker(log_path=workdir / "broker.log").start()
    b.create_topics({TOPIC: 1, DLQ: 1})
    yield b
    b.stop()


@pytest.fixture(scope="module")
def sidecar(broker: LocalBroker, workdir: Path) -> Iterator[SidecarProcess]:
    """Started first: it loads the model and joins its group while the other parts come up."""
    group = f"framewatch-tap-{uuid.uuid4().hex[:8]}"
    s = SidecarProcess(broker.bootstrap, workdir / "sidecar.log", group_id=group).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def upstream(workdir: Path) -> Iterator[UpstreamProcess]:
    u = UpstreamProcess(workdir / "upstream.log").start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def tap(broker: LocalBroker, upstream: UpstreamProcess, workdir: Path) -> Iterator[TapProcess]:
    # Default log level (info) and log_text off, as an operator gets them.
    t = TapProcess(broker.bootstrap, upstream.url, workdir / "tap.log",
                   extra_env={"FRAMEWATCH_TAP_MAX_BODY_BYTES": str(MAX_BODY),
                              "FRAMEWATCH_TAP_UPSTREAM_TIMEOUT_S": str(UPSTREAM_TIMEOUT_S)}).start()
    yield t
    t.stop()


class Topic:
    """Reads the events topic in order (one partition): what arrived since the last call."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        self.tp = TopicPartition(TOPIC, 0)
        self.consumer.assign([self.tp])
        self.consumer.seek_to_beginning(self.tp)

    def until(self, event_id: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Records up to and including the event ``event_id`` (the tap publishes in arrival order)."""
        got: list[dict[str, Any]] = []

        def arrived() -> bool:
            for batch in self.consumer.poll(timeout_ms=200).values():
                got.extend(json.loads(r.value) for r in batch)
            return any(e["event_id"] == event_id for e in got)

        wait_for(arrived, timeout, f"event {event_id} on {TOPIC}", interval=0.01)
        return got


@pytest.fixture(scope="module")
def topic(broker: LocalBroker) -> Iterator[Topic]:
    t = Topic(broker.bootstrap)
    yield t
    t.consumer.close()


_CLIENTS: dict[str, openai.OpenAI] = {}


def client(base: str) -> openai.OpenAI:
    """One ``openai`` client per base URL, as an application keeps one; closed when the module ends."""
    if base not in _CLIENTS:
        _CLIENTS[base] = openai.OpenAI(api_key=API_KEY, base_url=base + "/v1", max_retries=0)
    return _CLIENTS[base]


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.popitem()[1].close()  # their pooled sockets, not left to the garbage collector


ROWS = replay.load_rows()
RNG = random.Random(18)


def prompt() -> str:
    text = RNG.choice(ROWS).prompt
    SENT_PROMPTS.append(text)
    return text


def marker(tap: TapProcess, topic: Topic) -> list[dict[str, Any]]:
    """Send one capturable request and return every event published since the previous call, marker excluded:
    the tap publishes in order, so what came before the marker's event is all that will come."""
    resp = client(tap.url).chat.completions.create(model="marker", messages=[{"role": "user", "content": prompt()}])
    events = topic.until(resp.id)
    assert events[-1]["event_id"] == resp.id
    return events[:-1]


def same_headers(a: httpx.Headers, b: httpx.Headers) -> None:
    strip = {"date"}  # set by the upstream per second: the only header allowed to differ between two answers
    assert [(k, v) for k, v in a.multi_items() if k not in strip] == \
        [(k, v) for k, v in b.multi_items() if k not in strip]


# ------------------------------------------------------------------------------------------------ tests


@needs_model  # the sidecar (framewatch run) loads the ONNX model
def test_answers_byte_identical_and_one_event_per_exchange(sidecar: SidecarProcess, tap: TapProcess,
                                                           upstream: UpstreamProcess, topic: Topic) -> None:
    marker(tap, topic)  # everything published so far (nothing) is out of the way
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    system = replay.SYSTEM_PROMPTS[0]
    cases: list[dict[str, Any]] = [
        {"kind": "chat", "stream": False, "messages": [{"role": "user", "content": prompt()}],
         "headers": {"traceparent": traceparent}},
        {"kind": "chat", "stream": False,
         "messages": [{"role": "system", "content": system}, {"role": "user", "content": prompt()}]},
        {"kind": "chat", "stream": True, "messages": [{"role": "user", "content": prompt()}],
         "stream_options": {"include_usage": True}},
        {"kind": "chat", "stream": True, "messages": [{"role": "user", "content": prompt()}],
         "headers": {"traceparent": traceparent}},
        {"kind": "completion", "stream": False, "prompt": prompt()},
        {"kind": "completion", "stream": True, "prompt": prompt()},
    ]
    expected: dict[str, dict[str, Any]] = {}
    for case in cases:
        answers = []
        for base in (upstream.url, tap.url):
            api = client(base).chat.completions if case["kind"] == "chat" else client(base).completions
            kwargs: dict[str, Any] = {"model": "replay-model", "stream": case["stream"],
                                      "extra_headers": case.get("headers")}
            if case["kind"] == "chat":
                kwargs["messages"] = case["messages"]
            else:
                kwargs["prompt"] = case["prompt"]
            if "stream_options" in case:
                kwargs["stream_options"] = case["stream_options"]
            with api.with_streaming_response.create(**kwargs) as raw:  # type: ignore[attr-defined]
                body = b"".join(raw.iter_bytes())
                answers.append((raw.status_code, raw.headers, body))
        (s1, h1, b1), (s2, h2, b2) = answers
        assert s1 == s2 == 200
        assert b1 == b2, "the tap changed the body"
        same_headers(h1, h2)
        expected[_response_id(b2, case["stream"])] = case | {"body": b2}

    # and the client's own parsing through the tap, sync and streaming
    c = client(tap.url)
    sync = c.chat.completions.create(model="replay-model", messages=[{"role": "user", "content": prompt()}])
    stream = c.chat.completions.create(model="replay-model", messages=[{"role": "user", "content": prompt()}],
                                       stream=True)
    chunks = list(stream)
    streamed_text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert sync.choices[0].message.content and streamed_text

    events = marker(tap, topic)
    by_id = {e["event_id"]: e for e in events}
    assert len(events) == len(by_id) == len(cases) + 2, "exactly one event per completion exchange through the tap"
    assert set(expected) | {sync.id, chunks[0].id} == set(by_id)
    for event in events:
        jsonschema.validate(event, SCHEMA)
        assert API_KEY not in json.dumps(event)
    assert by_id[sync.id]["response"] == sync.choices[0].message.content
    assert by_id[chunks[0].id]["response"] == streamed_text
    for rid, case in expected.items():
        event = by_id[rid]
        text, usage = _answer(case["body"], case["stream"], case["kind"] == "chat")
        assert event["response"] == text and text
        assert event["model"] == "replay-model"
        meta = event["metadata"]
        assert meta["finish_reason"] == "stop" and meta["stream"] is case["stream"]
        assert meta["usage"] == usage  # None for a stream without include_usage: the upstream sent none
        if case["kind"] == "chat":
            assert event["messages"] == case["messages"] and "prompt" not in event
        else:
            assert event["prompt"] == case["prompt"] and "messages" not in event
        if "headers" in case:
            assert event["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        else:
            assert "trace_id" not in event
    # decoded and analysed by the real sidecar
    wait_for(lambda: set(by_id) <= {e["event_id"] for e in sidecar.log_events("event_processed")}, 120,
             "the sidecar to process every tapped event")
    assert sidecar.metric("framewatch_events_dead_lettered_total") == 0


def test_other_paths_pass_through_without_events(tap: TapProcess, upstream: UpstreamProcess, topic: Topic) -> None:
    marker(tap, topic)
    queued = tap.metric("framewatch_tap_events_queued_total")
    for method, path in (("GET", "/v1/models"), ("GET", "/health"), ("GET", "/no/such/path"),
                         ("GET", "/v1/chat/completions")):
        direct = httpx.request(method, upstream.url + path, headers={"Authorization": f"Bearer {API_KEY}"})
        tapped = httpx.request(method, tap.url + path, headers={"Authorization": f"Bearer {API_KEY}"})
        assert (tapped.status_code, tapped.content) == (direct.status_code, direct.content)
        same_headers(direct.headers, tapped.headers)
    assert marker(tap, topic) == []
    assert tap.metric("framewatch_tap_events_queued_total") == queued + 1  # the marker only
    assert tap.metric("framewatch_tap_requests_total", 'route="other"') >= 4


def test_upstream_errors_timeouts_and_breaks_pass_through(tap: TapProcess, upstream: UpstreamProcess,
                                                          topic: Topic) -> None:
    """Documented (docs/tap.md): 4xx/5xx go back unchanged and make no event; a timeout before the headers
    is a 504 from the tap; an upstream breaking off mid-stream breaks the client's stream off too. The last
    two count as dropped, reason "incomplete"."""
    marker(tap, topic)
    incomplete = tap.dropped("incomplete")
    errors_4xx = tap.metric("framewatch_tap_requests_total", 'code="4xx"')
    for status in (400, 404, 429, 500, 503):
        body = {"model": "m", "messages": [{"role": "user", "content": prompt()}], "replay_status": status}
        direct = httpx.post(upstream.url + "/v1/chat/completions", json=body)
        tapped = httpx.post(tap.url + "/v1/chat/completions", json=body)
        assert tapped.status_code == direct.status_code == status
        assert tapped.content == direct.content
        same_headers(direct.headers, tapped.headers)
    with pytest.raises(openai.InternalServerError):  # and the client sees the upstream's error as its own
        client(tap.url).chat.completions.create(model="m", messages=[{"role": "user", "content": prompt()}],
                                                extra_body={"replay_status": 503})
    assert tap.metric("framewatch_tap_requests_total", 'code="4xx"') == errors_4xx + 3

    slow = httpx.post(tap.url + "/v1/chat/completions", timeout=30,
                      json={"model": "m", "messages": [{"role": "user", "content": prompt()}],
                            "replay_delay_s": UPSTREAM_TIMEOUT_S * 2})
    assert slow.status_code == 504 and slow.json()["error"]["type"] == "framewatch_tap_error"

    broken = {"model": "m", "messages": [{"role": "user", "content": prompt()}], "stream": True,
              "replay_break_after": 3}
    for base in (upstream.url, tap.url):  # the same failure on both paths
        with httpx.stream("POST", base + "/v1/chat/completions", json=broken) as resp:
            assert resp.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                resp.read()
    assert marker(tap, topic) == []
    wait_for(lambda: tap.dropped("incomplete") == incomplete + 2, 10, "timeout and break-off counted incomplete")


def test_upstream_unreachable_is_a_502(broker: LocalBroker, workdir: Path) -> None:
    from monitor._tansu import free_port

    dead = TapProcess(broker.bootstrap, f"http://127.0.0.1:{free_port()}", workdir / "tap-dead.log").start()
    try:
        resp = httpx.post(dead.url + "/v1/chat/completions", json={"model": "m", "messages": []})
        assert resp.status_code == 502 and resp.json()["error"]["type"] == "framewatch_tap_error"
        assert dead.metric("framewatch_tap_requests_total", 'code="error"') == 1
    finally:
        dead.stop()


def test_client_disconnect_mid_stream(tap: TapProcess, upstream: UpstreamProcess, topic: Topic) -> None:
    """Documented: the tap stops reading the upstream (the server stops generating), publishes no event and
    counts the exchange as dropped, reason "incomplete"."""
    marker(tap, topic)
    incomplete, aborted = tap.dropped("incomplete"), upstream.stats()["aborted"]
    with client(tap.url).chat.completions.create(
            model="m", messages=[{"role": "user", "content": prompt()}], stream=True,
            extra_body={"replay_chunk_delay_s": 0.05}) as stream:
        for i, _chunk in enumerate(stream):
            if i == 3:
                break  # leaving the block closes the response: the client hangs up mid-stream
    wait_for(lambda: tap.dropped("incomplete") == incomplete + 1, 10, "the disconnect counted as incomplete")
    wait_for(lambda: upstream.stats()["aborted"] == aborted + 1, 10, "the upstream to see the stream abandoned")
    assert marker(tap, topic) == []


def test_large_request_passes_through_uncaptured(tap: TapProcess, upstream: UpstreamProcess, topic: Topic) -> None:
    marker(tap, topic)
    not_captured = tap.dropped("not_captured")
    big = {"model": "m", "messages": [{"role": "user", "content": prompt() + " " + "x" * (MAX_BODY * 2)}]}
    direct = httpx.post(upstream.url + "/v1/chat/completions", json=big)
    tapped = httpx.post(tap.url + "/v1/chat/completions", json=big)
    assert tapped.status_code == direct.status_code == 200 and tapped.content == direct.content
    assert marker(tap, topic) == []
    assert tap.dropped("not_captured") == not_captured + 1


def test_no_credential_and_no_prompt_in_the_logs(tap: TapProcess, topic: Topic) -> None:
    """Runs last in this module: everything above went through this tap."""
    marker(tap, topic)
    text = tap.log_text()
    assert '"tap_started"' in text and "tap_client_disconnected" in text, "the log holds the events above"
    assert API_KEY not in text and "Bearer" not in text
    assert len(SENT_PROMPTS) > 20
    leaked = [p for p in SENT_PROMPTS if p[:40] in text]
    assert not leaked, f"{len(leaked)} prompts in the tap's log"


# ---------------------------------------------------------------------------------------------- helpers


def _response_id(body: bytes, stream: bool) -> str:
    if not stream:
        return str(json.loads(body)["id"])
    first = body.split(b"\n\n", 1)[0].removeprefix(b"data: ")
    return str(json.loads(first)["id"])


def _answer(body: bytes, stream: bool, chat: bool) -> tuple[str, dict[str, Any] | None]:
    """The text and usage a client reads from the raw answer (independently of the tap's code)."""
    if not stream:
        obj = json.loads(body)
        choice = obj["choices"][0]
        return (choice["message"]["content"] if chat else choice["text"]), obj.get("usage")
    text, usage = [], None
    for block in body.decode().split("\n\n"):
        if not block.startswith("data: ") or block == "data: [DONE]":
            continue
        chunk = json.loads(block[6:])
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            text.append((choice.get("delta") or {}).get("content") or "" if chat else choice.get("text") or "")
    return "".join(text), usage
