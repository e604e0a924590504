"""deploy/compose/docker-compose.yaml: structure checks everywhere, `docker compose config` where it exists.

The compose stack cannot be started here (no Docker engine). What is checked instead:

* ``docker compose config`` (the Compose plugin's own validation and interpolation), skipped with a
  reason where the docker CLI or its compose plugin is missing;
* in plain Python: every image pinned to an exact version, Kafka in KRaft mode (no ZooKeeper), the
  framewatch service built from the repository Dockerfile and hardened (read-only root, tmpfs /tmp,
  non-root, no capabilities), every bind-mounted file present, Prometheus loading exactly
  deploy/prometheus/rules/*.yaml and scraping job `framewatch`, Grafana provisioned with the Prometheus
  datasource and the dashboard, and every FRAMEWATCH_* variable a real setting.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yaml"
RULES_DIR = REPO / "deploy" / "prometheus" / "rules"
DASHBOARD = REPO / "deploy" / "grafana" / "framewatch.dashboard.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def bind_mounts(service: dict) -> list[tuple[Path, str]]:
    """(host path resolved against the compose file's folder, container path) of every bind mount."""
    out = []
    for vol in service.get("volumes", []):
        source, target = vol.split(":")[:2]
        if source.startswith((".", "/")):
            out.append(((COMPOSE_DIR / source).resolve(), target))
    return out


def container_file(service: dict, container_path: str) -> Path:
    """The host file behind a container path, through the service's bind mounts."""
    for host, target in bind_mounts(service):
        if container_path == target:
            return host
        if container_path.startswith(target.rstrip("/") + "/"):
            return host / container_path[len(target.rstrip("/")) + 1:]
    raise AssertionError(f"{container_path} is not bind-mounted")


def test_services(compose):
    assert {"kafka", "framewatch", "prometheus", "alertmanager", "grafana"} <= set(compose["services"])
    assert not [s for s in compose["services"] if "zookeeper" in s]


@pytest.mark.parametrize("service", ["kafka", "kafka-init", "prometheus", "alertmanager", "grafana"])
def test_images_pinned(compose, service):
    image = compose["services"][service]["image"]
    pinned = re.match(r"^[\w./-]+:v?\d+\.\d+\.\d+$", image) or "@sha256:" in image
    assert pinned, f"{service}: {image} not pinned"


def test_kafka_kraft(compose):
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"]), "CLUSTER_ID must be a base64 UUID"
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    init = compose["services"]["kafka-init"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "llm.inferences" in " ".join(init["command"])


def test_framewatch_service(compose):
    fw = compose["services"]["framewatch"]
    assert (COMPOSE_DIR / fw["build"]["context"] / fw["build"]["dockerfile"]).resolve() == REPO / "Dockerfile"
    assert fw["read_only"] is True
    assert any(t.split(":")[0] == "/tmp" for t in fw["tmpfs"])
    assert fw["user"].split(":")[0] not in {"0", "root"}
    assert fw["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in fw["security_opt"]
    assert fw["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert fw["environment"]["FRAMEWATCH_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert any(p.endswith(":9464") for p in fw["ports"])


def test_framewatch_env_names_are_settings(compose):
    from monitor.settings import ENV_PREFIX, Settings

    known = {ENV_PREFIX + f.upper() for f in Settings.__dataclass_fields__} | {"FRAMEWATCH_ADMIN_TOKEN"}
    env = compose["services"]["framewatch"]["environment"]
    assert set(env) - known == set()


def test_bind_mounts_exist(compose):
    for name, service in compose["services"].items():
        for host, _ in bind_mounts(service):
            assert host.exists(), f"{name}: {host} missing"


def test_prometheus_loads_the_deploy_rules(compose):
    prom = compose["services"]["prometheus"]
    config = yaml.safe_load(container_file(prom, "/etc/prometheus/prometheus.yml").read_text())
    loaded: set[Path] = set()
    for pattern in config["rule_files"]:
        folder, glob = pattern.rsplit("/", 1)
        host = container_file(prom, folder)
        loaded |= {p.resolve() for p in host.iterdir() if fnmatch.fnmatch(p.name, glob)}
    expected = {p.resolve() for p in RULES_DIR.glob("*.yaml")}
    assert expected and loaded == expected
    for f in loaded:
        assert yaml.safe_load(f.read_text())["groups"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert "framewatch" in jobs, "rules and alerts expect job=framewatch"
    sd = jobs["framewatch"]["dns_sd_configs"][0]
    assert sd["names"] == ["framewatch"] and sd["port"] == 9464
    am = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["alertmanager:9093"]


def test_alertmanager_config(compose):
    am = compose["services"]["alertmanager"]
    config = yaml.safe_load(container_file(am, "/etc/alertmanager/alertmanager.yml").read_text())
    receivers = {r["name"] for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers


def test_grafana_provisioning(compose):
    grafana = compose["services"]["grafana"]
    ds_dir = container_file(grafana, "/etc/grafana/provisioning/datasources")
    (ds,) = [d for f in ds_dir.glob("*.yaml") for d in yaml.safe_load(f.read_text())["datasources"]]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090" and ds["isDefault"] is True
    dash_dir = container_file(grafana, "/etc/grafana/provisioning/dashboards")
    (provider,) = [p for f in dash_dir.glob("*.yaml") for p in yaml.safe_load(f.read_text())["providers"]]
    dashboards = [host for host, target in bind_mounts(grafana)
                  if target.startswith(provider["options"]["path"].rstrip("/") + "/")]
    assert [d.resolve() for d in dashboards] == [DASHBOARD.resolve()]
    assert json.loads(DASHBOARD.read_text())["uid"]


def test_docker_compose_config():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker CLI not installed")
    version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if version.returncode != 0:
        pytest.skip(f"docker CLI has no compose plugin: {(version.stderr or version.stdout).strip()[:120]}")
    proc = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
                          capture_output=True, text=True, cwd=COMPOSE_DIR)
    assert proc.returncode == 0, proc.stderr


def test_legacy_docker_compose_config(tmp_path):
    """Debian's docker-compose 1.29 (where installed) validates the file against its own schema copy.

    It predates the top-level ``name`` key, the only Compose v2 addition used here, so that key is
    removed from the copy it checks; everything else must pass unchanged.
    """
    legacy = shutil.which("docker-compose")
    if legacy is None:
        pytest.skip("docker-compose (v1) not installed")
    data = yaml.safe_load(COMPOSE.read_text())
    assert data.pop("name") == "framewatch"
    copy = tmp_path / "docker-compose.yaml"
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = subprocess.run([legacy, "-f", str(copy), "--project-directory", str(COMPOSE_DIR), "config", "-q"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
