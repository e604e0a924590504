"""KEDA autoscaling in the chart (autoscaling.keda): rendered with Helm, validated against KEDA's own CRD schemas.

The schemas are vendored from kedacore/keda (tests/integration/helm/keda/, README there) and applied strictly: an
object property a schema does not list is an error, as with ``kubectl apply --validate=strict``. The Deployment
that KEDA scales is validated with kubernetes-validate like every other manifest of the chart (tests/test_helm.py).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="dev dependency helm-python-sdk missing")
pytest.importorskip("kubernetes_validate", reason="dev dependency kubernetes-validate missing")

from tests.test_helm import CHART, FULL_VALUES, env_of, framewatch_containers, of_kind, render, strip  # noqa: E402

CRDS = Path(__file__).resolve().parent / "keda"
KEDA_ON = {"autoscaling": {"keda": {"enabled": True}}, "kafka": {"partitions": 6}}


def crd_schema(name: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / name).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def _strict(node: Any) -> Any:
    """Objects with listed properties and no additionalProperties reject unknown fields (kubectl --validate=strict)."""
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)
    return node


SCHEMAS = {"ScaledObject": crd_schema("keda.sh_scaledobjects.yaml"),
           "TriggerAuthentication": crd_schema("keda.sh_triggerauthentications.yaml")}


def validate(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "keda.sh/v1alpha1"
    jsonschema.validate(strip(doc), SCHEMAS[doc["kind"]])


def merged(*values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in values:
        out = _merge(out, copy.deepcopy(v))
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    for key, value in b.items():
        a[key] = _merge(a.get(key, {}), value) if isinstance(value, dict) and isinstance(a.get(key), dict) else value
    return a


def test_off_by_default() -> None:
    docs = render()
    assert not of_kind(docs, "ScaledObject") and not of_kind(docs, "TriggerAuthentication")
    assert of_kind(docs, "Deployment")[0]["spec"]["replicas"] == 2


def test_scaled_object_scales_the_deployment_on_group_lag() -> None:
    docs = render(KEDA_ON)
    (so,) = of_kind(docs, "ScaledObject")
    validate(so)
    (dep,) = of_kind(docs, "Deployment")
    assert "replicas" not in dep["spec"]  # KEDA owns the replica count: a helm upgrade must not reset it
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"],
                                      "envSourceContainerName": "framewatch"}
    assert spec["minReplicaCount"] == 1 and spec["maxReplicaCount"] == 6  # the partition count
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "apache-kafka"
    (_, container) = framewatch_containers(docs)[0]
    env = env_of(container)
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == env["FRAMEWATCH_KAFKA_GROUP_ID"]["value"]
    assert meta["topic"] == env["FRAMEWATCH_KAFKA_TOPIC"]["value"]
    assert meta["bootstrapServers"] == env["FRAMEWATCH_KAFKA_BOOTSTRAP_SERVERS"]["value"]
    assert meta["offsetResetPolicy"] == env["FRAMEWATCH_KAFKA_AUTO_OFFSET_RESET"]["value"] == "earliest"
    assert meta["lagThreshold"] == "1000" and "sasl" not in meta and "tls" not in meta
    assert "authenticationRef" not in trigger and not of_kind(docs, "TriggerAuthentication")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert so["metadata"]["labels"]["app.kubernetes.io/instance"] == pod_labels["app.kubernetes.io/instance"]


def test_sasl_and_tls_come_from_the_consumers_secrets() -> None:
    docs = render(merged(FULL_VALUES, KEDA_ON, {"autoscaling": {"keda": {"maxReplicaCount": 4,
                                                                           "triggerType": "kafka"}}}))
    (so,) = of_kind(docs, "ScaledObject")
    (ta,) = of_kind(docs, "TriggerAuthentication")
    validate(so)
    validate(ta)
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka" and so["spec"]["maxReplicaCount"] == 4  # explicit beats kafka.partitions
    assert trigger["metadata"]["sasl"] == "scram_sha512" and trigger["metadata"]["tls"] == "enable"
    assert trigger["authenticationRef"] == {"name": ta["metadata"]["name"]}
    refs = {r["parameter"]: (r["name"], r["key"]) for r in ta["spec"]["secretTargetRef"]}
    (pod, container) = framewatch_containers(docs)[0]
    env = env_of(container)
    password = env["FRAMEWATCH_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert refs["password"] == (password["name"], password["key"])
    (tls_volume,) = [v for v in pod["volumes"] if v["name"] == "framewatch-kafka-tls"]
    tls_secret = tls_volume["secret"]["secretName"]
    for parameter, path_env in (("ca", "FRAMEWATCH_KAFKA_SSL_CAFILE"), ("cert", "FRAMEWATCH_KAFKA_SSL_CERTFILE"),
                                ("key", "FRAMEWATCH_KAFKA_SSL_KEYFILE")):
        name, key = refs[parameter]
        assert name == tls_secret and env[path_env]["value"].endswith("/" + key)  # the very file the consumer reads
    # The plain username is read from the consumer container's environment.
    assert ta["spec"]["env"] == [{"parameter": "username", "name": "FRAMEWATCH_KAFKA_SASL_USERNAME",
                                  "containerName": container["name"]}]
    assert env["FRAMEWATCH_KAFKA_SASL_USERNAME"]["value"] == "fw"


def test_username_from_the_secret_when_the_consumer_takes_it_there() -> None:
    values = merged(FULL_VALUES, KEDA_ON, {"kafka": {"sasl": {"usernameKey": "user"}, "ssl": {"existingSecret": ""},
                                                     "securityProtocol": "SASL_PLAINTEXT"}})
    docs = render(values)
    (ta,) = of_kind(docs, "TriggerAuthentication")
    validate(ta)
    refs = {r["parameter"]: (r["name"], r["key"]) for r in ta["spec"]["secretTargetRef"]}
    assert refs == {"password": ("kafka-creds", "password"), "username": ("kafka-creds", "user")}
    assert "env" not in ta["spec"]
    (so,) = of_kind(docs, "ScaledObject")
    assert "tls" not in so["spec"]["triggers"][0]["metadata"]


def test_the_schema_check_can_fail() -> None:
    (so,) = of_kind(render(KEDA_ON), "ScaledObject")
    so["spec"]["maxReplicas"] = 3  # the HPA's name, not KEDA's
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        validate(so)
    (so,) = of_kind(render(KEDA_ON), "ScaledObject")
    so["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 5  # KEDA metadata values are strings
    with pytest.raises(jsonschema.ValidationError):
        validate(so)


@pytest.mark.parametrize("values, match", [
    ({"autoscaling": {"keda": {"enabled": True}}}, "kafka.partitions"),
    (merged(KEDA_ON, {"autoscaling": {"keda": {"minReplicaCount": 8}}}), "minReplicaCount"),
    (merged(KEDA_ON, {"standalone": {"enabled": False}}), "standalone.enabled"),
])
def test_settings_that_cannot_scale_fail_to_render(values: dict[str, Any], match: str) -> None:
    with pytest.raises(helm.HelmError, match=match):
        render(values)


@pytest.mark.parametrize("bad, where", [
    ({"autoscaling": {"keda": {"minReplicaCount": 0}}}, "minReplicaCount"),
    ({"autoscaling": {"keda": {"triggerType": "kafka-go"}}}, "triggerType"),
    ({"autoscaling": {"keda": {"replicas": 2}}}, "replicas"),
    ({"kafka": {"partitions": 0}}, "partitions"),
])
def test_values_schema_rejects_bad_autoscaling(bad: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match=where):
        chart.validate_schema(bad)


def test_the_scaled_deployment_still_validates_strict(tmp_path: Path) -> None:
    (dep,) = of_kind(render(merged(FULL_VALUES, KEDA_ON)), "Deployment")
    f = tmp_path / "deployment.yaml"
    f.write_text(yaml.safe_dump(strip(dep)))
    proc = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.25.0", str(f)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
