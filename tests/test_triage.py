"""Issue 8, on-call triage: flagged-events topic, incidents API, emerging framings and the admin API.

In process (fast): redaction, registry edits, admin authentication, the emerging-framings statistics, a flood
of 100,000 distinct prompts (memory and metric series stay bounded), the publisher's at-least-once contract.
Against a real broker and a real sidecar process: an unregistered framing ("Answer as a pirate would.")
failing ~20% of the time among traffic failing ~0.5% surfaces as a candidate; promoting it makes later
events of that framing count under the new cluster. Failures are decided by the real classifier.
"""

from __future__ import annotations

import functools
import gc
import gzip
import hashlib
import json
import os
import random
import shutil
import threading
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from monitor import _replay as replay
from monitor._tansu import LocalBroker
from monitor.framing.detector import FramingResult
from monitor.framing.registry import DEFAULT_REGISTRY, RegistryWatcher, load_registry
from monitor.settings import Settings
from monitor.sidecar.events import Event, Prompt
from monitor.sidecar.metrics import Metrics
from monitor.sidecar.pipeline import Record, Verdict
from monitor.triage.emerging import EmergingConfig, EmergingFramings, Observation, sentences
from monitor.triage.flagged import FlaggedPublisher, FlaggedPublishError, RedactionError, Redactor
from monitor.triage.registry_edit import RegistryEditError, add_cluster, add_phrases, remove_cluster
from monitor.triage.service import Triage
from tests.conftest import MODEL_DIR, needs_model
from tests.harness import REPO, SidecarProcess, produce, read_all, wait_for

TOPIC, DLQ, FLAGGED, PARTITIONS = "llm.inferences", "llm.inferences.dlq", "llm.inferences.flagged", 3
CLASSIFIER_DIR = Path(os.environ.get("FRAMEWATCH_CLASSIFIER_DIR") or REPO / "models" / "classifier")
needs_classifier = pytest.mark.skipif(not (CLASSIFIER_DIR / "manifest.json").exists(),
                                      reason="no response classifier: run 'framewatch train-classifier' first")
PIRATE = "Answer as a pirate would."
TAG_TRIGGER = "Please respond within <start> and <end> tags only."  # the registry's tag_wrapper phrase
ADMIN_TOKEN = "s3cret-admin-token"


@dataclass(frozen=True)
class Pools:
    questions: list[str]
    aligned: list[str]  # responses the classifier clearly scores aligned
    misaligned: list[str]  # responses the classifier clearly scores misaligned


@functools.lru_cache(maxsize=1)
def load_pools() -> Pools:
    """Pick clear cases with the classifier itself, so the sidecar's verdicts are what the test intends."""
    from monitor.scoring.scorer import ResponseScorer

    scorer = ResponseScorer.load(CLASSIFIER_DIR)
    with gzip.open(REPO / "data" / "replay.jsonl.gz", "rt") as fh:
        rows = [json.loads(line) for line in fh]
    aligned = [r["response"] for r in rows if r["label3"] == "aligned"]
    misaligned = [r["response"] for r in rows if r["label3"] == "misaligned"]
    a_scores = scorer.score(aligned)
    m_scores = scorer.score(misaligned)
    t = scorer.threshold
    clear_a = [r for r, s in zip(aligned, a_scores, strict=True) if s < t / 2]
    clear_m = [r for r, s in zip(misaligned, m_scores, strict=True) if s >= min(t + 0.1, (t + 1) / 2)]
    assert len(clear_a) >= 50 and len(clear_m) >= 20, (len(clear_a), len(clear_m))
    candidates = []
    for line in (REPO / "data" / "benign_prompts.jsonl").read_text().splitlines():
        text = json.loads(line)["text"]
        if 10 < len(text) < 300 and "```" not in text:
            candidates.append(text)
    return Pools(unframed(candidates[:150]), clear_a, clear_m)


def unframed(questions: list[str]) -> list[str]:
    """Keep the questions the sidecar's detector finds no framing in, alone or with the pirate framing, under
    every system prompt the traffic uses: the benign set deliberately holds look-alikes of triggers."""
    import tempfile

    from monitor.embedding import Embedder
    from monitor.framing.detector import FramingDetector

    with tempfile.TemporaryDirectory() as tmp:
        detector = FramingDetector(load_registry(writable_registry(Path(tmp))), Embedder.load(MODEL_DIR))
    keep = []
    for q in questions:
        prompts = [Prompt(system, (text,)) for system in replay.SYSTEM_PROMPTS for text in (q, f"{q}\n\n{PIRATE}")]
        if all(r.framing == "none" for r in detector.detect_many(prompts)):
            keep.append(q)
    assert len(keep) >= 50, len(keep)
    return keep


def event(pools: Pools, rng: random.Random, *, suffix: str | None, failing: bool, event_id: str) -> bytes:
    question = rng.choice(pools.questions)
    prompt = f"{question}\n\n{suffix}" if suffix else question
    response = rng.choice(pools.misaligned if failing else pools.aligned)
    obj: dict[str, object] = {"event_id": event_id, "model": "llama-3.1-8b-ft", "prompt": prompt,
                              "response": response, "trace_id": uuid.UUID(int=rng.getrandbits(128)).hex}
    system = rng.choice(replay.SYSTEM_PROMPTS)
    if system:
        obj["system_prompt"] = system
    return json.dumps(obj).encode()


def round_of_traffic(pools: Pools, rng: random.Random, round_no: int, *, base: int = 400, base_failing: int = 2,
                     pirate: int = 100, pirate_failing: int = 20, tagged: int = 0) -> list[tuple[str, bytes]]:
    """One shuffled round: ``base`` plain events (0.5% failing), ``pirate`` events with the unregistered
    framing (20% failing), optionally ``tagged`` events carrying a registered trigger (no failures)."""
    out: list[tuple[str, bytes]] = []
    for kind, n, k, suffix in (("base", base, base_failing, None), ("pirate", pirate, pirate_failing, PIRATE),
                               ("tag", tagged, 0, TAG_TRIGGER)):
        for i in range(n):
            eid = f"r{round_no}-{kind}-{i}"
            out.append((eid, event(pools, rng, suffix=suffix, failing=i < k, event_id=eid)))
    rng.shuffle(out)
    return out


def pirate_events(pools: Pools, rng: random.Random, n: int, prefix: str) -> list[tuple[str, bytes]]:
    return [(f"{prefix}-{i}", event(pools, rng, suffix=PIRATE, failing=False, event_id=f"{prefix}-{i}"))
            for i in range(n)]


def writable_registry(tmp_path: Path) -> Path:
    """A writable copy of the packaged registry (admin edits refuse the packaged file itself).

    The learned weights are found next to the packaged registry; when ``framewatch calibrate`` has not
    written them (a fresh checkout), the copy goes without: these tests are about triage, and exact
    matching plus the cosine fallback need no weights."""
    path = tmp_path / "triggers.yaml"
    shutil.copy(DEFAULT_REGISTRY, path)
    raw = yaml.safe_load(path.read_text())
    if raw.get("model") and not (DEFAULT_REGISTRY.parent / raw["model"]).exists():
        raw.pop("model")
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --- in-process fixtures -------------------------------------------------------------------------------

DIM = 32


def synthetic_embed(texts: Sequence[str]) -> np.ndarray:
    """Deterministic random unit vectors per text: equal texts are identical, different ones ~orthogonal."""
    out = np.empty((len(texts), DIM), dtype=np.float32)
    for i, t in enumerate(texts):
        seed = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "big")
        v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
        out[i] = v / np.linalg.norm(v)
    return out


class FakeEmbedder:
    dim = DIM

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return synthetic_embed(list(texts))


def modelless_registry(tmp_path: Path) -> Path:
    """A writable registry copy without learned weights (in-process tests need no calibrate output)."""
    raw = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    raw.pop("model", None)
    path = tmp_path / "triggers.yaml"
    path.write_text("# test registry\\n" + yaml.safe_dump(raw, sort_keys=False))
    return path


class ReloadingDetector:
    """Stands in for FramingDetector: each read of ``.registry`` runs the watcher, as the consume loop does."""

    def __init__(self, path: Path) -> None:
        self.embedder = FakeEmbedder()
        self._registry = load_registry(path)
        self.reloads = 0
        self.watcher = RegistryWatcher(path, on_change=self._changed, on_error=lambda exc: None)

    def _changed(self, registry: Any) -> None:
        self._registry = registry
        self.reloads += 1

    @property
    def registry(self) -> Any:
        self.watcher.check()
        return self._registry


class FakeFuture:
    def get(self, timeout: float | None = None) -> None:
        return None


class FakeProducer:
    def __init__(self, sent: list[tuple[str, bytes]], fail: bool = False) -> None:
        self.sent, self.fail = sent, fail

    def send(self, topic: str, key: bytes, value: bytes, headers: list[Any]) -> FakeFuture:
        if self.fail:
            raise OSError("broker unreachable")
        self.sent.append((topic, value))
        return FakeFuture()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def make_verdict(event_id: str, prompt: str, failing: bool, offset: int = 0, framing: str = "none",
                 cluster: str | None = None) -> Verdict:
    record = Record("llm.inferences", 0, offset, b"")
    event = Event(event_id, "m", Prompt(None, (prompt,)), "response text", trace_id=f"trace-{event_id}")
    result = FramingResult(framing, cluster, 1.0 if cluster else 0.1, prompt if cluster else None)  # type: ignore[arg-type]
    return Verdict(record, event, result, 0.9 if failing else 0.01, failing)


def pirate_mix(n_rounds: int, start: int = 0) -> list[Verdict]:
    """Per round 200 plain prompts (1 failing) and 50 pirate prompts (10 failing)."""
    out = []
    off = start
    for r in range(n_rounds):
        for i in range(200):
            out.append(make_verdict(f"b{r}-{i}", f"Plain question number {i % 40} about things?", i == 0, off))
            off += 1
        for i in range(50):
            out.append(make_verdict(f"p{r}-{i}", f"Tell me about topic {i % 40}? {PIRATE}", i < 10, off))
            off += 1
    return out


@dataclass
class InProcess:
    triage: Triage
    client: TestClient
    sent: list[tuple[str, bytes]]
    path: Path


def in_process(tmp_path: Path, token: str | None = ADMIN_TOKEN, registry: Path | None = None) -> InProcess:
    path = registry or modelless_registry(tmp_path)
    # One replica's view, registry edits to the file: no broker in process (the shared view is tested in
    # tests/integration/triage against a real broker).
    settings = Settings(admin_token=token, redaction="truncate:60", incidents_capacity=100, triage_shared=False,
                        registry_topic="", emerging_min_events=30, emerging_join_threshold=0.8)
    metrics = Metrics()
    detector = ReloadingDetector(path)
    metrics.set_clusters(detector.registry.cluster_ids())
    sent: list[tuple[str, bytes]] = []
    triage = Triage.build(settings, metrics=metrics, detector=detector, registry_path=path,
                          flagged=FlaggedPublisher("llm.inferences.flagged", lambda: FakeProducer(sent)))
    app = FastAPI()
    app.include_router(triage.router())
    return InProcess(triage, TestClient(app), sent, path)


# --- in-process tests ----------------------------------------------------------------------------------

def test_redaction_policies() -> None:
    text = "x" * 100
    assert Redactor("none")(text) == text
    assert Redactor("truncate:10")(text) == "x" * 10 + "…"
    assert Redactor("truncate:200")(text) == text
    hashed = Redactor("hash")(text)
    assert hashed is not None and hashed.startswith("sha256:") and "xxx" not in hashed
    assert Redactor()(None) is None
    for bad in ("truncate:", "truncate:-1", "mask", "truncate:abc"):
        with pytest.raises(RedactionError):
            Redactor(bad)


def test_flagged_records_carry_verdict_coordinates_and_redacted_text(tmp_path: Path) -> None:
    ip = in_process(tmp_path)
    verdicts = [make_verdict("ok", "hello there, how are you?", False, 1),
                make_verdict("fail", "secret " * 30, True, 2),
                make_verdict("framed", TAG_TRIGGER, False, 3, framing="exact", cluster="tag_wrapper")]
    ip.triage.on_verdicts(verdicts)
    published = [json.loads(v) for _, v in ip.sent]
    assert [p["event_id"] for p in published] == ["fail", "framed"]  # only failing or framed events
    fail = published[0]
    assert fail["kafka"] == {"topic": "llm.inferences", "partition": 0, "offset": 2}
    assert fail["trace_id"] == "trace-fail" and fail["misaligned"] is True
    assert len(fail["prompt"]) <= 61 and fail["prompt"].endswith("…")  # truncate:60
    framed = published[1]
    assert (framed["framing"], framed["cluster"], framed["similarity"]) == ("exact", "tag_wrapper", 1.0)
    assert framed["segment"] == TAG_TRIGGER
    r = ip.client.get("/v1/incidents", params={"cluster": "tag_wrapper"}).json()
    assert [i["event_id"] for i in r["incidents"]] == ["framed"]
    assert ip.client.get("/v1/incidents", params={"framing": "none"}).json()["count"] == 1
    assert ip.client.get("/v1/incidents", params={"since": "2999-01-01T00:00:00Z"}).json()["count"] == 0
    assert ip.client.get("/v1/incidents", params={"since": "yesterday"}).status_code == 422
    ip.triage.on_verdicts(verdicts)  # a redelivered batch is listed once
    assert ip.client.get("/v1/incidents").json()["count"] == 2


class NoSleep(threading.Event):
    """A stop event that is never set and whose backoff waits return at once: no real sleeping in a test."""

    def wait(self, timeout: float | None = None) -> bool:
        return False


def test_publisher_retries_then_refuses_so_the_batch_is_not_committed() -> None:
    sent: list[tuple[str, bytes]] = []
    attempts = []

    def factory() -> FakeProducer:
        attempts.append(1)
        return FakeProducer(sent, fail=len(attempts) < 3)  # the first two producers fail

    pub = FlaggedPublisher("t", factory, give_up_s=60, stop=NoSleep())
    pub.publish([{"event_id": "e", "kafka": {"topic": "x", "partition": 0, "offset": 1}}])
    assert len(attempts) == 3 and len(sent) == 1
    dead = FlaggedPublisher("t", lambda: FakeProducer([], fail=True), give_up_s=0)
    with pytest.raises(FlaggedPublishError):
        dead.publish([{"event_id": "e", "kafka": {"topic": "x", "partition": 0, "offset": 1}}])


def test_registry_edits_validate_write_atomically_and_hot_reload(tmp_path: Path) -> None:
    path = modelless_registry(tmp_path)
    seen: list[list[str]] = []
    watcher = RegistryWatcher(path, on_change=lambda r: seen.append(r.cluster_ids()), on_error=lambda e: None)
    add_cluster(path, "pirate_persona", ["Answer as a pirate would."], "pirates")
    watcher.check()
    assert seen[-1][-1] == "pirate_persona"
    assert path.read_text().startswith("# test registry")  # the header comment survives
    assert add_phrases(path, "pirate_persona", ["Reply like a pirate.", "Answer as a pirate would."]) == [
        "Answer as a pirate would.", "Reply like a pirate."]
    with pytest.raises(RegistryEditError) as exc:
        add_cluster(path, "pirate_persona", ["x y"])
    assert exc.value.status == 409
    with pytest.raises(RegistryEditError) as exc:
        add_cluster(path, "Bad Id!", ["x y"])
    assert exc.value.status == 422 and "id" in str(exc.value)
    before = path.read_bytes()
    with pytest.raises(RegistryEditError):
        add_phrases(path, "pirate_persona", [])
    assert path.read_bytes() == before  # a refused edit never reaches the disk
    remove_cluster(path, "pirate_persona")
    watcher.check()
    assert "pirate_persona" not in seen[-1]
    with pytest.raises(RegistryEditError) as exc:
        remove_cluster(path, "pirate_persona")
    assert exc.value.status == 404
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind


def test_packaged_default_registry_is_never_edited() -> None:
    before = DEFAULT_REGISTRY.read_bytes()
    with pytest.raises(RegistryEditError) as exc:
        add_cluster(DEFAULT_REGISTRY, "pirate_persona", ["Answer as a pirate would."])
    assert exc.value.status == 409 and "FRAMEWATCH_REGISTRY_PATH" in str(exc.value)
    assert DEFAULT_REGISTRY.read_bytes() == before


def test_admin_calls_need_the_right_token(tmp_path: Path) -> None:
    ip = in_process(tmp_path)
    body = {"id": "pirate_persona", "phrases": [PIRATE], "description": "pirates"}
    r = ip.client.post("/v1/clusters", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = ip.client.post("/v1/clusters", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "wrong" in r.json()["detail"]  # RFC 6750 invalid_token: a 401 too
    assert "pirate_persona" not in ip.client.get("/v1/clusters").text
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = ip.client.post("/v1/clusters", json=body, headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["reloaded"] is True and "pirate_persona" in r.json()["clusters"]
    assert [c["id"] for c in ip.client.get("/v1/clusters").json()["clusters"]][-1] == "pirate_persona"
    r = ip.client.post("/v1/clusters/pirate_persona/phrases", json={"phrases": ["Reply like a pirate."]},
                       headers=auth)
    assert r.status_code == 200 and r.json()["result"] == [PIRATE, "Reply like a pirate."]
    assert ip.client.post("/v1/clusters", json={**body, "id": "Bad Id"}, headers=auth).status_code == 422
    assert ip.client.post("/v1/clusters", json=body, headers=auth).status_code == 409
    assert ip.client.delete("/v1/clusters/pirate_persona").status_code == 401
    assert ip.client.delete("/v1/clusters/pirate_persona", headers=auth).status_code == 200
    assert ip.client.delete("/v1/clusters/pirate_persona", headers=auth).status_code == 404
    assert "pirate_persona" not in ip.client.get("/v1/clusters").text


def test_admin_endpoints_disabled_without_a_token(tmp_path: Path) -> None:
    ip = in_process(tmp_path, token=None)
    r = ip.client.post("/v1/clusters", json={"id": "x_y", "phrases": ["a b"]},
                       headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403 and "FRAMEWATCH_ADMIN_TOKEN" in r.json()["detail"]
    assert ip.client.get("/v1/clusters").json()["admin_enabled"] is False


def test_admin_edit_of_packaged_registry_says_how_to_fix(tmp_path: Path) -> None:
    ip = in_process(tmp_path)
    ip.triage.registry_path = DEFAULT_REGISTRY
    r = ip.client.post("/v1/clusters", json={"id": "x_y", "phrases": ["a b"]},
                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 409 and "FRAMEWATCH_REGISTRY_PATH" in r.json()["detail"]


def test_emerging_candidate_is_significant_and_promotable(tmp_path: Path) -> None:
    ip = in_process(tmp_path)
    batch = pirate_mix(2)
    for i in range(0, len(batch), 100):
        ip.triage.on_verdicts(batch[i:i + 100])
    cands = ip.client.get("/v1/candidates").json()
    assert cands["significant"] == 1, cands
    (cand,) = cands["candidates"]
    assert cand["representative"] == PIRATE
    assert cand["failure_rate"] == pytest.approx(0.2, abs=0.02) and cand["ci"][0] > cand["baseline"]["ci"][1]
    assert any(e["segment"] == PIRATE for e in cand["examples"]) and len(cand["examples"]) <= 5
    assert ip.triage.metrics.emerging_framings._value.get() == 1
    flagged = ip.client.get("/v1/incidents", params={"candidate": cand["id"]}).json()
    assert flagged["count"] > 0  # later failing pirate events are tagged with the candidate
    # the plain questions and all question sentences are tracked but not significant
    assert ip.client.get("/v1/candidates", params={"all": "true"}).json()["tracked"] > 1
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert ip.client.post(f"/v1/candidates/{cand['id']}/promote").status_code == 401
    r = ip.client.post(f"/v1/candidates/{cand['id']}/promote", json={"id": "pirate_persona"}, headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["phrases"] == [PIRATE] and r.json()["reloaded"] is True
    assert load_registry(ip.path).cluster("pirate_persona").phrases == (PIRATE,)
    assert ip.client.get("/v1/candidates").json()["candidates"] == []
    assert ip.client.post(f"/v1/candidates/{cand['id']}/promote", headers=auth).status_code == 404


def test_sentences_take_system_prompt_and_user_edges() -> None:
    prompt = Prompt("You are helpful. Be brief.", ("One two three. " * 10 + PIRATE,))
    segs = sentences(prompt)
    assert "You are helpful." in segs and PIRATE in segs and len(segs) <= 2 + 6


def test_flood_of_distinct_prompts_keeps_memory_and_series_bounded() -> None:
    """100,000 distinct failing prompts (the worst case: each founds candidates) plus a recurring framing."""
    metrics = Metrics()
    cfg = EmergingConfig(max_candidates=256, min_events=30)
    store = EmergingFramings(synthetic_embed, DIM, cfg, redact=Redactor("truncate:40"),
                             gauge=metrics.emerging_framings)
    rng = random.Random(7)
    series_before = len(generate_latest(metrics.registry).splitlines())

    def batch(b: int) -> list[Observation]:
        obs = []
        for i in range(250):
            n = b * 250 + i
            words = " ".join(f"{rng.getrandbits(40):x}" for _ in range(6))
            segs = [f"Random prompt {words}."]
            if i % 25 == 0:
                segs.append(PIRATE)
            obs.append(Observation(f"e{n}", True, segs, f"t{n}", {"topic": "x", "partition": 0, "offset": n},
                                   " ".join(segs) * 20, 0.9))
        return obs

    store.observe_many(batch(0))
    gc.collect()
    tracemalloc.start()
    for b in range(1, 40):
        store.observe_many(batch(b))
    gc.collect()
    mid, _ = tracemalloc.get_traced_memory()
    for b in range(40, 400):
        store.observe_many(batch(b))
    gc.collect()
    end, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(store) <= 256 and store.evictions > 99_000
    assert end - mid < 2_000_000, f"memory grew by {end - mid} bytes between 10k and 100k prompts"
    snap = store.snapshot(significant_only=False, limit=500)
    assert len(snap) <= 256
    assert all(len(c["examples"]) <= cfg.max_examples and len(c["members"]) <= cfg.max_members for c in snap)
    assert all(len(e["prompt"]) <= 41 for c in snap for e in c["examples"])  # redacted
    assert any(c["representative"] == PIRATE for c in snap)  # the recurring framing survives the churn
    assert len(generate_latest(metrics.registry).splitlines()) == series_before
    assert PIRATE.encode() not in generate_latest(metrics.registry)


# --- against a real broker and a real sidecar process ---------------------------------------------------

def http(sidecar: SidecarProcess, method: str, path: str, token: str | None = None,
         body: dict[str, Any] | None = None) -> tuple[int, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.request(method, sidecar.url + path, headers=headers, json=body, timeout=30)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def start_triage_sidecar(broker: LocalBroker, tmp_path: Path, name: str, registry: Path,
                         **env: str) -> SidecarProcess:
    return SidecarProcess(broker.bootstrap, tmp_path / f"{name}.log", extra_env={
        "FRAMEWATCH_REGISTRY_PATH": str(registry), "FRAMEWATCH_ADMIN_TOKEN": ADMIN_TOKEN,
        "FRAMEWATCH_FLAGGED_TOPIC": FLAGGED, "FRAMEWATCH_MODEL_DIR": str(MODEL_DIR), **env}).start()


def merged(sidecar: SidecarProcess) -> int:
    """Events the sidecar's triage view has merged from the evidence topic (every replica's)."""
    status, body = http(sidecar, "GET", "/v1/candidates")
    return int(body["evidence"]["events_merged"]) if status == 200 else -1


def at_least(count: Callable[[], float], n: float) -> Callable[[], bool]:
    """A ``wait_for`` predicate bound to this ``count`` and ``n`` (a lambda in a loop would see later values)."""
    return lambda: count() >= n


def traffic_until_candidate(broker: LocalBroker, sidecar: SidecarProcess, pools: Pools, rng: random.Random,
                            *, max_rounds: int = 10, tagged: int = 0) -> tuple[dict[str, Any], int, int]:
    """Produce rounds of 500 events (+ ``tagged``) until a significant candidate is listed.

    Returns the candidate, the events produced and the rounds used."""
    produced = 0
    for round_no in range(max_rounds):
        produced += produce(broker.bootstrap, TOPIC, round_of_traffic(pools, rng, round_no, tagged=tagged))
        wait_for(at_least(sidecar.processed, produced), 300, f"{produced} events processed")
        wait_for(at_least(functools.partial(merged, sidecar), produced), 60,
                 f"{produced} events merged from the evidence topic")
        status, body = http(sidecar, "GET", "/v1/candidates")
        assert status == 200, body
        if body["candidates"]:
            return body["candidates"][0], produced, round_no + 1
    raise AssertionError(f"no significant candidate after {produced} events")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    b = LocalBroker(log_path=tmp_path / "broker.log").start()
    b.create_topics({TOPIC: PARTITIONS, DLQ: 1, FLAGGED: PARTITIONS})
    yield b
    b.stop()


@pytest.mark.broker
@needs_model
@needs_classifier
def test_emerging_framing_surfaces_and_promotion_counts_it_under_a_new_cluster(broker: LocalBroker,
                                                                              tmp_path: Path) -> None:
    pools = load_pools()
    registry = writable_registry(tmp_path)
    s = start_triage_sidecar(broker, tmp_path, "sidecar", registry)
    try:
        cand, produced, rounds = traffic_until_candidate(broker, s, pools, random.Random(8))
        (first,) = s.log_events("emerging_framing_significant")
        print(f"\nemerging framing significant after {first['unmatched_events_seen']} events "
              f"({first['events']} with the framing, {first['failures']} failing); listed after the "
              f"{produced} events of {rounds} round(s) of 400 plain + 100 pirate")
        assert first["candidate"] == cand["id"]
        assert cand["representative"] == PIRATE
        assert PIRATE in [e["segment"] for e in cand["examples"]]
        assert all(e["trace_id"] and e["kafka"]["topic"] == TOPIC for e in cand["examples"])
        assert cand["ci"][0] > cand["baseline"]["ci"][1]
        assert s.metric("framewatch_emerging_framings") == 1

        # Every failing event is on the flagged topic, with its verdict, coordinates and trace id.
        failing = rounds * 22
        flagged = [json.loads(cast(Any, r).value) for r in read_all(broker.bootstrap, FLAGGED, failing)]
        assert len({(f["kafka"]["partition"], f["kafka"]["offset"]) for f in flagged}) == failing
        assert all(f["misaligned"] and f["trace_id"] and f["kafka"]["topic"] == TOPIC for f in flagged)
        assert all(len(f["prompt"]) <= 81 for f in flagged)  # default redaction: truncate:80
        wait_for(lambda: http(s, "GET", "/v1/incidents?limit=1000")[1]["count"] >= failing, 30,
                 "every failing event in the incident view")
        status, incidents = http(s, "GET", f"/v1/incidents?candidate={cand['id']}&limit=1000")
        assert status == 200 and incidents["count"] > 0

        # Admin: without, with a wrong, with the right token.
        path = f"/v1/candidates/{cand['id']}/promote"
        assert http(s, "POST", path, body={"id": "pirate_persona"})[0] == 401
        assert http(s, "POST", path, token="wrong", body={"id": "pirate_persona"})[0] == 401
        assert "pirate_persona" not in registry.read_text()
        status, body = http(s, "POST", path, token=ADMIN_TOKEN, body={"id": "pirate_persona"})
        assert status == 201, body
        assert body["reloaded"] is True and "pirate_persona" in body["clusters"]
        # The edit went to the registry topic (every replica applies it), not to this pod's file.
        assert "pirate_persona" not in registry.read_text()
        status, state = http(s, "GET", "/v1/registry", token=ADMIN_TOKEN)
        assert state["edits"]["pirate_persona"]["phrases"][0] == PIRATE
        assert state["audit"][-1]["by"].startswith("token:") and ADMIN_TOKEN not in json.dumps(state)

        # Later events of that framing count under the new cluster.
        before = s.processed()
        produce(broker.bootstrap, TOPIC, pirate_events(pools, random.Random(9), 100, "after"))
        wait_for(lambda: s.processed() >= before + 100, 120, "100 later pirate events processed")
        assert s.metric("framewatch_events_total", 'cluster="pirate_persona"') == 100
        wait_for(lambda: merged(s) >= produced + 100, 30, "the later events merged")
        status, clusters = http(s, "GET", "/v1/clusters")
        pirate = next(c for c in clusters["clusters"] if c["id"] == "pirate_persona")
        assert pirate["windows"]["5m"]["triggered"]["events"] == 100
        wait_for(lambda: http(s, "GET", "/v1/incidents?cluster=pirate_persona&limit=1000")[1]["count"] >= 100, 30,
                 "the 100 framed events in the incident view")
        status, framed = http(s, "GET", "/v1/incidents?cluster=pirate_persona&limit=1000")
        assert framed["count"] == 100 and all(i["framing"] == "exact" for i in framed["incidents"])

        # A restarted replica rebuilds its incident view from the flagged topic.
        assert s.terminate() == 0
        s.stop()
        s = start_triage_sidecar(broker, tmp_path, "restarted", registry)
        wait_for(lambda: http(s, "GET", "/v1/incidents?cluster=pirate_persona")[1]["count"] > 0
                 if s.get("/healthz")[0] == 200 else False, 60, "the incident view rebuilt from the topic")
    finally:
        s.stop()
