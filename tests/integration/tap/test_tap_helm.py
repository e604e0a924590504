"""The tap in the Helm chart: injected into the inference pod by the example vLLM chart, rendered with the
chart's own test helpers (tests/test_helm.py: helm-python-sdk, kubernetes-validate there covers these
manifests too), and its environment read back by the real Settings loader."""

from __future__ import annotations

import copy

import pytest

from tests.test_helm import (  # noqa: F401 - umbrella_chart is a fixture used below
    CHART,
    env_of,
    example_values,
    helm,
    of_kind,
    render,
    umbrella_chart,
)


def tap_values(enabled: bool = True) -> dict:
    values = example_values()
    values["framewatch"]["tap"]["enabled"] = enabled
    return values


def pod_of(docs: list[dict]) -> dict:
    (vllm,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-vllm")]
    return vllm


@pytest.fixture(scope="module")
def umbrella(umbrella_chart) -> list[dict]:  # noqa: F811
    return render(tap_values(), chart=umbrella_chart)


def test_tap_container_in_the_inference_pod(umbrella: list[dict]) -> None:
    pod = pod_of(umbrella)["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert list(containers) == ["vllm", "framewatch", "framewatch-tap"]
    tap, sidecar, vllm = containers["framewatch-tap"], containers["framewatch"], containers["vllm"]
    assert tap["args"] == ["tap"] and tap["image"] == sidecar["image"]
    ports = {p["name"]: p["containerPort"] for p in tap["ports"]}
    assert ports == {"tap-http": 8001, "tap-metrics": 9465}
    env = env_of(tap)
    vllm_port = next(p["containerPort"] for p in vllm["ports"] if p["name"] == "http")
    assert env["FRAMEWATCH_TAP_UPSTREAM"]["value"] == f"http://127.0.0.1:{vllm_port}", "forwards on localhost"
    # the same Kafka connection as the sidecar, secrets by reference only
    for name in ("FRAMEWATCH_KAFKA_BOOTSTRAP_SERVERS", "FRAMEWATCH_KAFKA_TOPIC", "FRAMEWATCH_KAFKA_SECURITY_PROTOCOL",
                 "FRAMEWATCH_KAFKA_SASL_MECHANISM", "FRAMEWATCH_KAFKA_SASL_USERNAME", "FRAMEWATCH_KAFKA_SASL_PASSWORD",
                 "FRAMEWATCH_KAFKA_SSL_CAFILE", "FRAMEWATCH_KAFKA_CLIENT_ID"):
        assert env[name] == env_of(sidecar)[name], name
    assert "value" not in env["FRAMEWATCH_KAFKA_SASL_PASSWORD"]
    volumes = {v["name"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in tap["volumeMounts"]}
    assert all(m["name"] in volumes for m in mounts.values())
    assert mounts["/tmp"]["name"] == "framewatch-tmp"
    assert any(env["FRAMEWATCH_KAFKA_SSL_CAFILE"]["value"].startswith(p + "/") and m["readOnly"]
               for p, m in mounts.items())
    sc = tap["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert tap["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "tap-metrics"}
    assert tap["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "tap-metrics"}


def test_rendered_env_loads_into_settings(umbrella: list[dict]) -> None:
    from monitor.settings import ENV_PREFIX, Settings

    tap = next(c for c in pod_of(umbrella)["spec"]["template"]["spec"]["containers"] if c["name"] == "framewatch-tap")
    env = {e["name"]: e.get("value", "from-a-secret-or-field") for e in tap["env"]}
    assert all(n.startswith(ENV_PREFIX) for n in env)
    settings = Settings.load(env=env)  # unknown names would be ignored, so check them against the fields too
    known = {ENV_PREFIX + f.upper() for f in Settings.__dataclass_fields__}
    assert set(env) <= known
    assert (settings.tap_port, settings.tap_metrics_port, settings.tap_queue_size) == (8001, 9465, 1000)
    assert settings.tap_max_body_bytes == 1_048_576 and settings.tap_upstream_timeout_s == 600.0


def test_service_targets_the_tap_and_its_metrics_are_scraped(umbrella: list[dict]) -> None:
    pod = pod_of(umbrella)["spec"]["template"]
    (svc,) = [s for s in of_kind(umbrella, "Service") if s["metadata"]["name"].endswith("-vllm")]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == "tap-http"
    tap = next(c for c in pod["spec"]["containers"] if c["name"] == "framewatch-tap")
    assert "tap-http" in {p["name"] for p in tap["ports"]}
    (metrics,) = [s for s in of_kind(umbrella, "Service") if s["metadata"]["name"].endswith("-sidecar")]
    assert {"name": "tap-metrics", "port": 9465, "targetPort": "tap-metrics", "protocol": "TCP"} in \
        metrics["spec"]["ports"]
    (sm,) = of_kind(umbrella, "ServiceMonitor")
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["http-metrics", "tap-metrics"]


def test_tap_off_renders_no_container_and_the_service_targets_vllm(umbrella_chart) -> None:  # noqa: F811
    docs = render(tap_values(enabled=False), chart=umbrella_chart)
    pod = pod_of(docs)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["vllm", "framewatch"]
    (svc,) = [s for s in of_kind(docs, "Service") if s["metadata"]["name"].endswith("-vllm")]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    (sm,) = of_kind(docs, "ServiceMonitor")
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["http-metrics"]
    assert of_kind(render(), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["name"] == "framewatch"


@pytest.mark.parametrize("bad, where", [
    ({"tap": {"port": 0}}, "port"),
    ({"tap": {"upstream": "localhost:8000"}}, "upstream"),
    ({"tap": {"queueSize": 0}}, "queueSize"),
    ({"tap": {"buffer": 1}}, "buffer"),
])
def test_schema_rejects_bad_tap_values(bad: dict, where: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match=where):
        chart.validate_schema(copy.deepcopy(bad))
