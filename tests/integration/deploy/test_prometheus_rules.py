"""Prometheus rules, alerts, the Grafana dashboard and the metric docs.

* ``promtool check rules`` and ``promtool test rules`` over ``deploy/prometheus`` (skipped when promtool is
  not installed), plus mutation checks: a weakened rule must make the unit tests fail.
* Every PromQL expression of the dashboard and of ``docs/metrics.md`` is parsed by promtool (wrapped as a
  recording rule after substituting Grafana variables).
* Every metric name used anywhere is one of docs/CONTRACTS.md or a recording rule of ours.
* The dashboard satisfies ``deploy/grafana/dashboard.schema.json`` and layout rules JSON Schema cannot say.
* Each alert has severity, summary, description and a runbook_url whose anchor exists in docs/runbook.md.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from itertools import combinations
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

PROM_DIR = REPO / "deploy" / "prometheus"
RULES_FILE = PROM_DIR / "rules" / "framewatch.rules.yaml"
ALERTS_FILE = PROM_DIR / "rules" / "framewatch.alerts.yaml"
UNIT_TESTS = sorted((PROM_DIR / "tests").glob("*.test.yaml"))
DASHBOARD = REPO / "deploy" / "grafana" / "framewatch.dashboard.json"
DASHBOARD_SCHEMA = REPO / "deploy" / "grafana" / "dashboard.schema.json"
CONTRACTS = REPO / "docs" / "CONTRACTS.md"
METRICS_DOC = REPO / "docs" / "metrics.md"
RUNBOOK = REPO / "docs" / "runbook.md"
RUNBOOK_BASE = "https://github.com/framewatch/framewatch/blob/main/docs/runbook.md"

EXPECTED_ALERTS = {
    "FramingCorrelatedFailures",
    "TriggeredTrafficSurge",
    "EmergingFramingDetected",
    "FramewatchConsumerLagHigh",
    "FramewatchDown",
    "FramewatchDeadLetterRate",
}
SEVERITIES = {"critical", "warning", "info"}

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found on PATH (Debian: apt-get install prometheus)"
)

# Values substituted for Grafana variables before promtool parses a dashboard expression.
GRAFANA_VARS = {
    "model": ".*",
    "cluster": ".*",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}

PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "inf", "nan",
}
# Labels an expression may group or match on: the contract's labels, histogram buckets, target labels.
ALLOWED_LABELS = {
    "model", "framing", "cluster", "reason", "topic", "partition", "result", "version",
    "le", "job", "instance", "pod", "alertname", "alertstate", "__name__",
}


# ------------------------------------------------------------------------------------------------ helpers
def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def all_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for path in (RULES_FILE, ALERTS_FILE):
        for group in load_yaml(path)["groups"]:
            rules.extend(group["rules"])
    return rules


def alert_rules() -> list[dict[str, Any]]:
    return [r for r in all_rules() if "alert" in r]


def recorded_names() -> set[str]:
    return {r["record"] for r in all_rules() if "record" in r}


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, raw expression) for every PromQL expression of the dashboard, variables included."""
    out: list[tuple[str, str]] = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]))
    for ann in dash["annotations"]["list"]:
        if "expr" in ann:
            out.append((f"annotation {ann['name']!r}", ann["expr"]))
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip(), re.S)
        assert m, f"variable {var['name']}: only label_values(<selector>, <label>) is supported: {query!r}"
        out.append((f"variable {var['name']}", m.group(1)))
    return out


def substitute_grafana_vars(expr: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in GRAFANA_VARS:
            raise AssertionError(f"unknown Grafana variable ${name} in {expr!r}")
        return GRAFANA_VARS[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


def doc_promql_blocks(path: Path) -> list[str]:
    return re.findall(r"```promql\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def _strip(expr: str) -> str:
    expr = re.sub(r"#[^\n]*", "", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (a lexical approximation, good for our rules)."""
    e = _strip(expr)
    e = re.sub(r"\{[^}]*\}", "{}", e)
    e = re.sub(r"\[[^\]]*\]", "[]", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1()", e)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)", e):
        token = m.group(1)
        if token.lower() in PROMQL_KEYWORDS:
            continue
        if re.match(r"\s*\(", e[m.end():]):  # a function call
            continue
        names.add(token)
    return names


def label_names(expr: str) -> set[str]:
    e = _strip(expr)
    labels: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e):
        labels.update(x.strip() for x in group.split(",") if x.strip())
    for matchers in re.findall(r"\{([^}]*)\}", _strip_keep_strings_for_matchers(expr)):
        labels.update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    return labels


def _strip_keep_strings_for_matchers(expr: str) -> str:
    # Replace string contents (which may contain '=' or braces) with empty strings, keep the quotes.
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', re.sub(r"#[^\n]*", "", expr))


def contract_metric_names() -> set[str]:
    text = CONTRACTS.read_text(encoding="utf-8")
    section = text.split("## Metric names", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`(framewatch_\w+)", section))
    histograms = set(re.findall(r"`(framewatch_\w+)(?:\{[^}]*\})?`\s*\(histogram", section))
    assert names and histograms, "could not read the metric names from docs/CONTRACTS.md"
    for h in histograms:
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def github_slug(heading: str) -> str:
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def wrap_as_rules(exprs: list[str], prefix: str) -> dict[str, Any]:
    return {"groups": [{"name": prefix, "rules": [
        {"record": f"{prefix}:expr_{i}", "expr": e} for i, e in enumerate(exprs)
    ]}]}


# ------------------------------------------------------------------------------------------------ promtool
@needs_promtool
def test_promtool_check_rules() -> None:
    res = promtool("check", "rules", str(RULES_FILE), str(ALERTS_FILE))
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_promtool_check_example_config() -> None:
    res = promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(
    shutil.which("amtool") is None, reason="amtool not found on PATH (Debian: prometheus-alertmanager)"
)
def test_amtool_check_example_alertmanager_config() -> None:
    res = subprocess.run(["amtool", "check-config", str(PROM_DIR / "alertmanager.yml")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no deploy/prometheus/tests/*.test.yaml"
    res = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(UNIT_TESTS), res.stdout


def test_unit_tests_cover_every_alert_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in UNIT_TESTS:
        doc = load_yaml(path)
        assert {Path(f).name for f in doc["rule_files"]} == {RULES_FILE.name, ALERTS_FILE.name}, path
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    assert firing >= EXPECTED_ALERTS, f"no firing test for {EXPECTED_ALERTS - firing}"
    assert silent >= EXPECTED_ALERTS, f"no not-firing test for {EXPECTED_ALERTS - silent}"


# Each mutation weakens one rule; the unit tests in the named file must notice (otherwise they test nothing).
MUTATIONS = {
    "min_samples ignored": ("containment", RULES_FILE.name, "expr: vector(200)", "expr: vector(1)"),
    "min_gap ignored": ("containment", RULES_FILE.name, "expr: vector(0.05)\n", "expr: vector(0)\n"),
    "no Wilson margin (z=0)": ("containment", RULES_FILE.name, "expr: vector(1.96)", "expr: vector(0)"),
    "counts of a single replica": (
        "containment",
        RULES_FILE.name,
        "sum by (model, framing, cluster) (increase(",
        "max by (model, framing, cluster) (increase(",
    ),
    "average of per-replica ratios": (
        "containment",
        RULES_FILE.name,
        "model_cluster:framewatch_triggered_failures:increase30m\n"
        "          / (model_cluster:framewatch_triggered_events:increase30m > 0)",
        "avg by (model, cluster) (\n"
        "          sum by (model, cluster, instance) (\n"
        '            increase(framewatch_failures_total{framing!="none"}[30m]))\n'
        "          / sum by (model, cluster, instance) (\n"
        '            increase(framewatch_events_total{framing!="none"}[30m]))\n'
        "          )",
    ),
    "no fill for missing failures series": (
        "containment",
        RULES_FILE.name,
        "          or\n          0 * model_framing_cluster:framewatch_events:increase30m",
        "",
    ),
    "no 1d baseline": ("surge", ALERTS_FILE.name, "ratio_rate1h offset 1d", "ratio_rate1h offset 1d * 0"),
    "no minimum traffic for surges": ("surge", RULES_FILE.name, "expr: vector(0.1)", "expr: vector(0)"),
    "lag partitions double-counted": (
        "pipeline", RULES_FILE.name, "max by (topic, partition)", "sum by (topic, partition)"
    ),
    "absent target not detected": (
        "pipeline", ALERTS_FILE.name, 'absent(up{job="framewatch"})', 'up{job="x"}'
    ),
}


@needs_promtool
@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_unit_tests_catch_weakened_rules(name: str, tmp_path: Path) -> None:
    test_file, filename, old, new = MUTATIONS[name]
    shutil.copytree(PROM_DIR / "rules", tmp_path / "rules")
    shutil.copytree(PROM_DIR / "tests", tmp_path / "tests")
    target = tmp_path / "rules" / filename
    text = target.read_text(encoding="utf-8")
    assert text.count(old) >= 1, f"mutation {name!r} no longer applies: {old!r} not in {filename}"
    target.write_text(text.replace(old, new), encoding="utf-8")
    check = promtool("check", "rules", str(target))
    assert check.returncode == 0, f"mutation {name!r} broke the syntax: {check.stdout}{check.stderr}"
    res = promtool("test", "rules", str(tmp_path / "tests" / f"{test_file}.test.yaml"))
    assert res.returncode != 0, f"{test_file}.test.yaml still passes with mutation {name!r}:\n{res.stdout}"


# ------------------------------------------------------------------------------------------------ alerts
def test_alert_set_and_required_fields() -> None:
    alerts = alert_rules()
    names = [a["alert"] for a in alerts]
    assert sorted(names) == sorted(EXPECTED_ALERTS)
    for a in alerts:
        assert a["labels"]["severity"] in SEVERITIES, a["alert"]
        ann = a["annotations"]
        for key in ("summary", "description", "runbook_url"):
            assert ann.get(key, "").strip(), f"{a['alert']}: empty {key}"
        assert ann["runbook_url"] == f"{RUNBOOK_BASE}#{a['alert'].lower()}", a["alert"]


def test_runbook_has_a_section_per_alert() -> None:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", RUNBOOK.read_text(encoding="utf-8"), re.M)
    slugs = {github_slug(h) for h in headings}
    missing = {a["alert"] for a in alert_rules() if a["alert"].lower() not in slugs}
    assert not missing, f"docs/runbook.md has no heading for {missing}"


def test_alert_tunables_are_recorded_constants() -> None:
    """The alert thresholds live in framewatch:config:* rules and every one of them is used."""
    prefix = "framewatch:config:"
    config = {r["record"]: r["expr"] for r in all_rules() if r.get("record", "").startswith(prefix)}
    assert {f"{prefix}min_gap", f"{prefix}min_samples", f"{prefix}wilson_z"} <= set(config)
    for name, expr in config.items():
        assert re.fullmatch(r"vector\([0-9.]+\)", expr.strip()), f"{name} must be vector(<number>): {expr!r}"
    used = " ".join(r["expr"] for r in all_rules() if not r.get("record", "").startswith(prefix))
    unused = {n for n in config if f"scalar({n})" not in used}
    assert not unused, f"config rules never used: {unused}"


def test_framing_correlated_failures_uses_all_conditions() -> None:
    (rule,) = [a for a in alert_rules() if a["alert"] == "FramingCorrelatedFailures"]
    expr = rule["expr"]
    for needle in ("framewatch:config:min_gap", "framewatch:config:min_samples", "wilson_lower30m",
                   "wilson_upper30m", "model:framewatch_untriggered_events:increase30m"):
        assert needle in expr, needle


def test_rules_never_average_ratios() -> None:
    """Ratios must be sum(num)/sum(den) after rate/increase; avg() over replicas would be wrong."""
    for r in all_rules():
        assert not re.search(r"\bavg\s*(by|without|\()", r["expr"]), r.get("record") or r.get("alert")


# ------------------------------------------------------------------------------------------------ names
def test_every_metric_name_is_known() -> None:
    known = contract_metric_names() | recorded_names() | {"up", "ALERTS"}
    sources: list[tuple[str, str]] = [(r.get("record") or r["alert"], r["expr"]) for r in all_rules()]
    sources += dashboard_exprs(load_dashboard())
    sources += [(f"docs/metrics.md block {i}", e) for i, e in enumerate(doc_promql_blocks(METRICS_DOC))]
    sources += [(f"docs/runbook.md block {i}", e) for i, e in enumerate(doc_promql_blocks(RUNBOOK))]
    unknown = {(where, n) for where, e in sources for n in metric_names(e) if n not in known}
    assert not unknown, f"metric names not in docs/CONTRACTS.md nor recorded: {sorted(unknown)}"
    bad_labels = {(where, lbl) for where, e in sources for lbl in label_names(e) if lbl not in ALLOWED_LABELS}
    assert not bad_labels, f"unknown labels: {sorted(bad_labels)}"


def test_name_extraction_sees_metric_names() -> None:
    expr = ('sum by (cluster) (rate(framewatch_evnts_total{framing!="none"}[5m])) '
            '/ on (model) group_left () x:y:z offset 1d > 1e-9')
    assert metric_names(expr) == {"framewatch_evnts_total", "x:y:z"}
    assert label_names(expr) == {"cluster", "model", "framing"}


def test_metrics_doc_covers_contract_and_recording_rules() -> None:
    text = METRICS_DOC.read_text(encoding="utf-8")
    base = {n for n in contract_metric_names() if not re.search(r"_(bucket|sum|count)$", n)}
    missing = {n for n in base if f"`{n}`" not in text}
    assert not missing, f"docs/metrics.md does not describe {missing}"
    missing_rules = {n for n in recorded_names() if n not in text}
    assert not missing_rules, f"docs/metrics.md does not list recording rules {missing_rules}"


# ------------------------------------------------------------------------------------------------ dashboard
def test_dashboard_matches_schema() -> None:
    schema = json.loads(DASHBOARD_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(load_dashboard()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_dashboard() -> None:
    schema = json.loads(DASHBOARD_SCHEMA.read_text(encoding="utf-8"))
    dash = load_dashboard()
    panel = next(p for p in dash["panels"] if p["type"] == "timeseries")
    panel["datasource"] = {"type": "prometheus", "uid": "prod-prometheus"}
    del panel["targets"][0]["expr"]
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(dash))
    assert len(errors) >= 1


def test_dashboard_layout_and_ids() -> None:
    dash = load_dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    boxes = []
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, f"panel {p['id']} wider than the grid"
        boxes.append((p["id"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), f"panel {p['id']}: duplicate refId"
    for (a, ax0, ay0, ax1, ay1), (b, bx0, by0, bx1, by1) in combinations(boxes, 2):
        overlap = ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1
        assert not overlap, f"panels {a} and {b} overlap"


def test_dashboard_has_required_panels_and_exemplars() -> None:
    dash = load_dashboard()
    exprs = " ".join(e for _, e in dashboard_exprs(dash))
    for needle in ("framewatch_events_total", "framewatch_failures_total", "containment_gap",
                   "framewatch_misalignment_score_bucket", "framewatch_framing_similarity_bucket",
                   "framewatch_consumer_lag", "framewatch_events_dead_lettered_total",
                   "framewatch_embedding_cache_hits_total", "histogram_quantile(0.5",
                   "histogram_quantile(0.99", "framewatch_batch_processing_seconds_bucket"):
        assert needle in exprs, f"dashboard has no panel using {needle}"
    targets = [t for p in dash["panels"] for t in p.get("targets", [])]
    for metric in ("framewatch_failures_total", "framewatch_misalignment_score_bucket"):
        with_metric = [t for t in targets if metric in t["expr"]]
        assert any(t.get("exemplar") is True for t in with_metric), f"no exemplars on {metric}"
    heatmaps = [p for p in dash["panels"] if p["type"] == "heatmap"]
    assert heatmaps and all(t.get("format") == "heatmap" for p in heatmaps for t in p["targets"])
    used_vars = set(re.findall(r"\$\{?(\w+)", exprs))
    defined = {v["name"] for v in dash["templating"]["list"]} | {"__rate_interval", "__interval", "__range"}
    assert used_vars <= defined, f"undefined variables {used_vars - defined}"
    assert {"model", "cluster"} <= used_vars


@needs_promtool
def test_dashboard_and_doc_promql_parses(tmp_path: Path) -> None:
    exprs = [substitute_grafana_vars(e) for _, e in dashboard_exprs(load_dashboard())]
    exprs += [e.strip() for e in doc_promql_blocks(METRICS_DOC) + doc_promql_blocks(RUNBOOK)]
    assert len(exprs) > 20
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump(wrap_as_rules(exprs, "dashboard")), encoding="utf-8")
    res = promtool("check", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in res.stdout, res.stdout


@needs_promtool
def test_promql_check_rejects_bad_expressions(tmp_path: Path) -> None:
    """Negative control: the wrapping used above does reject invalid PromQL."""
    bad_exprs = (
        "sum by (cluster (rate(framewatch_events_total[5m]))",
        'rate(framewatch_events_total{a="b"})',
    )
    for bad in bad_exprs:
        path = tmp_path / "bad.rules.yaml"
        path.write_text(yaml.safe_dump(wrap_as_rules([bad], "bad")), encoding="utf-8")
        assert promtool("check", "rules", str(path)).returncode != 0, bad


# ------------------------------------------------------------------------------------------------ Wilson
WILSON_CASES = [(0, 300), (45, 300), (300, 300), (3, 30), (15, 3000), (21, 210), (7, 210), (1, 600)]


@needs_promtool
def test_promql_wilson_bounds_match_monitor_stats(tmp_path: Path) -> None:
    """The recording rules' Wilson bounds equal monitor.stats.wilson_interval for the same k and n."""
    stats = pytest.importorskip("monitor.stats")
    series = []
    exprs = []
    for i, (k, n) in enumerate(WILSON_CASES):
        lo, hi = stats.wilson_interval(k, n, 1.96)
        for framing, cluster in (("semantic", "c"), ("none", "none")):
            labels = f'model="m{i}",framing="{framing}",cluster="{cluster}"'
            # increase() over [30m] of a counter growing by x per minute is exactly 30 * x.
            series.append({"series": f"framewatch_events_total{{{labels}}}", "values": f"0+{n / 30!r}x60"})
            series.append({"series": f"framewatch_failures_total{{{labels}}}", "values": f"0+{k / 30!r}x60"})
        lower = "model_cluster:framewatch_triggered_failures_per_event:wilson_lower30m"
        exprs.append({
            "expr": f'abs({lower}{{model="m{i}"}} - {lo!r}) < bool 1e-9',
            "eval_time": "45m",
            "exp_samples": [{"labels": f'{{model="m{i}",cluster="c"}}', "value": 1}],
        })
        upper = "model:framewatch_untriggered_failures_per_event:wilson_upper30m"
        exprs.append({
            "expr": f'abs({upper}{{model="m{i}"}} - {hi!r}) < bool 1e-9',
            "eval_time": "45m",
            "exp_samples": [{"labels": f'{{model="m{i}"}}', "value": 1}],
        })
    doc = {
        "rule_files": [str(RULES_FILE)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": exprs}],
    }
    path = tmp_path / "wilson.test.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    res = promtool("test", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
