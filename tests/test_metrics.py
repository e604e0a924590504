"""Metrics: bounded labels, zero series per registry, exemplars within the OpenMetrics limit, /v1/status."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from monitor.sidecar.metrics import EXEMPLAR_MAX, Metrics, exemplar
from monitor.sidecar.windows import SlidingCounts, status


def series(m: Metrics, name: str) -> list[str]:
    return [ln for ln in generate_latest(m.registry).decode().splitlines() if ln.startswith(name + "{")]


def test_zero_series_for_every_model_framing_cluster_and_reload_updates_them() -> None:
    m = Metrics(model_allowlist=["llama", "qwen"])
    m.set_clusters(["tag_wrapper", "duck_phrase"])
    lines = series(m, "framewatch_events_total")
    # 3 models (2 allowed + other) x (none/none + 2 clusters x exact/semantic) = 15, all zero
    assert len(lines) == 15 and all(ln.endswith(" 0.0") for ln in lines)
    m.set_clusters(["tag_wrapper", "pirate"])
    lines = series(m, "framewatch_events_total")
    assert len(lines) == 15
    assert not any('cluster="duck_phrase"' in ln for ln in lines)
    assert any('cluster="pirate"' in ln for ln in lines)


def test_unknown_models_collapse_to_other() -> None:
    m = Metrics(model_allowlist=["llama"])
    assert m.model_label("llama") == "llama"
    assert m.model_label("some-random-finetune-123") == "other"


def test_exemplar_stays_within_the_openmetrics_limit_and_keeps_coordinates() -> None:
    ex = exemplar("t" * 500, "e", partition=12, offset=987654321)
    assert sum(len(k) + len(v) for k, v in ex.items()) <= EXEMPLAR_MAX
    assert ex["kafka"] == "12:987654321"
    assert exemplar(None, "event-1", 0, 5) == {"event_id": "event-1", "kafka": "0:5"}
    m = Metrics()
    m.set_clusters(["c"])
    m.failures.labels("other", "exact", "c").inc(exemplar=ex)  # would raise past the limit
    assert 'kafka="12:987654321"' in openmetrics_latest(m.registry).decode()


def test_status_reports_rates_intervals_and_the_gap() -> None:
    counts = SlidingCounts(clock=lambda: 1000.0)
    counts.add("none", "none", 1000, 5)
    counts.add("tag_wrapper", "exact", 60, 9)
    counts.add("tag_wrapper", "semantic", 40, 6)
    out = status(counts, ["tag_wrapper", "duck_phrase"])["5m"]
    assert out["untriggered"]["events"] == 1000 and out["untriggered"]["failure_rate"] == 0.005
    tag = out["clusters"][0]
    assert tag["triggered"]["events"] == 100 and tag["triggered"]["failures"] == 15
    lo, hi = tag["triggered"]["ci"]
    assert lo < 0.15 < hi
    assert abs(tag["gap"]["gap"] - 0.145) < 1e-9
    assert tag["gap"]["ci"][0] > 0 and tag["gap"]["p_value"] < 1e-6
    assert out["clusters"][1]["gap"] is None  # no triggered traffic: no gap claimed


def test_windows_forget_old_buckets() -> None:
    now = [0.0]
    counts = SlidingCounts(clock=lambda: now[0])
    counts.add("none", "none", 10, 1)
    now[0] = 301.0
    assert counts.totals("5m") == {("none", "none"): (0, 0)}
    assert counts.totals("1h") == {("none", "none"): (10, 1)}
