from __future__ import annotations

from pathlib import Path

import pytest

from monitor.settings import Settings, SettingsError


def test_defaults_match_the_documented_names() -> None:
    s = Settings.load(env={})
    assert (s.kafka_topic, s.kafka_group_id, s.dlq_topic, s.http_port) == (
        "llm.inferences", "framewatch", "llm.inferences.dlq", 9464)
    assert s.log_text is False


def test_env_wins_over_yaml(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka_topic: from-yaml\nhttp_port: 1000\nmodel_allowlist: [a, b]\n")
    s = Settings.load(cfg, env={"FRAMEWATCH_HTTP_PORT": "2000", "FRAMEWATCH_KAFKA_BOOTSTRAP_SERVERS": "k:9092"})
    assert s.kafka_topic == "from-yaml" and s.http_port == 2000 and s.model_allowlist == ["a", "b"]
    assert s.kafka_bootstrap_servers == "k:9092"


@pytest.mark.parametrize(("env", "message"), [
    ({"FRAMEWATCH_HTTP_PORT": "abc"}, "http_port"),
    ({"FRAMEWATCH_HTTP_PORT": "70000"}, "http_port"),
    ({"FRAMEWATCH_LOG_TEXT": "maybe"}, "log_text"),
    ({"FRAMEWATCH_KAFKA_SECURITY_PROTOCOL": "TLS"}, "kafka_security_protocol"),
])
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.load(env=env)


def test_unknown_yaml_key_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafak_topic: typo\n")
    with pytest.raises(SettingsError, match="unknown setting 'kafak_topic'"):
        Settings.load(cfg, env={})


def test_redacted_hides_the_sasl_password() -> None:
    s = Settings.load(env={"FRAMEWATCH_KAFKA_SASL_PASSWORD": "hunter2"})
    assert "hunter2" not in str(s.redacted())
