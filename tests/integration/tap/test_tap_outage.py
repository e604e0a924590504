"""The broker goes away under the tap: every request still gets its answer, what cannot be published is
counted as dropped, and events flow again once the broker is back. Real parts: Tansu, ``framewatch tap``,
the ``openai`` client, and the replay upstream standing in for vLLM (which cannot run here)."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from monitor import _replay as replay
from monitor._tansu import LocalBroker, free_port
from tests.harness import read_all, wait_for
from tests.integration.tap.procs import TapProcess, UpstreamProcess

pytestmark = [pytest.mark.broker]
TOPIC = "llm.inferences"


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[UpstreamProcess]:
    u = UpstreamProcess(tmp_path / "upstream.log").start()
    yield u
    u.stop()


def ask(c: openai.OpenAI, rng: random.Random, stream: bool) -> tuple[str, str]:
    """One exchange; returns (response id, the text the client read)."""
    messages = [{"role": "user", "content": rng.choice(replay.load_rows()).prompt + f" #{uuid.uuid4().hex[:6]}"}]
    if stream:
        chunks = list(c.chat.completions.create(model="m", messages=messages, stream=True))  # type: ignore[arg-type]
        return chunks[0].id, "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    resp = c.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
    return resp.id, resp.choices[0].message.content or ""


def test_broker_outage_never_fails_a_request(upstream: UpstreamProcess, tmp_path: Path) -> None:
    port = free_port()
    broker = LocalBroker(port=port, log_path=tmp_path / "broker.log").start()
    tap = TapProcess(broker.bootstrap, upstream.url, tmp_path / "tap.log",
                     extra_env={"FRAMEWATCH_TAP_QUEUE_SIZE": "4", "FRAMEWATCH_TAP_PUBLISH_TIMEOUT_MS": "3000"})
    rng = random.Random(7)
    c = openai.OpenAI(api_key="sk-outage", base_url=tap.url + "/v1", max_retries=0)
    direct = openai.OpenAI(api_key="sk-outage", base_url=upstream.url + "/v1", max_retries=0)
    try:
        broker.create_topics({TOPIC: 1})
        tap.start()
        before = [ask(c, rng, stream=i % 2 == 1)[0] for i in range(4)]
        wait_for(lambda: tap.metric("framewatch_tap_events_published_total") == 4, 30, "events before the outage")

        broker.stop()
        answered = 0
        for i in range(30):
            rid, text = ask(c, rng, stream=i % 2 == 1)
            assert text, "an answer through the tap while the broker is down"
            answered += 1
        assert answered == 30
        wait_for(lambda: tap.dropped("queue_full") + tap.dropped("publish_failed") > 0, 30,
                 "drops counted while the broker is down")
        # the tap still answers like the upstream itself
        msg = [{"role": "user", "content": "same question"}]
        assert c.chat.completions.create(model="m", messages=msg).model_dump() == \
            direct.chat.completions.create(model="m", messages=msg).model_dump()  # type: ignore[arg-type]

        broker = LocalBroker(port=port, log_path=tmp_path / "broker2.log").start()  # memory only: empty again
        broker.create_topics({TOPIC: 1})

        def flowing() -> bool:  # keep asking until the tap's producer has found the broker again
            ask(c, rng, stream=False)
            return tap.metric("framewatch_tap_events_published_total") > 4
        wait_for(flowing, 90, "the producer to reconnect", interval=1.0)
        after = [ask(c, rng, stream=i % 2 == 1)[0] for i in range(4)]
        records = read_all(broker.bootstrap, TOPIC, expected=10**6, timeout=8)
        ids = {json.loads(r.value)["event_id"] for r in records}  # type: ignore[attr-defined]
        assert set(after) <= ids, "events flow again after the broker came back"
        assert not set(before) & ids, "the new broker is empty: nothing from before the outage"
        assert tap.proc is not None and tap.proc.poll() is None
        assert tap.terminate() == 0
    finally:  # everything this test started or opened, even when it failed half-way
        c.close()
        direct.close()
        tap.stop()
        broker.stop()
