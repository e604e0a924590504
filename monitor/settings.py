"""One typed settings object for the whole process.

Sources, lowest priority first: defaults, an optional YAML file (``--config``), then ``FRAMEWATCH_*``
environment variables. Env wins so that a Helm chart can override one value of a shared ConfigMap.
A YAML key is the field name (``kafka_topic: llm.inferences``); the env name is ``FRAMEWATCH_`` + the
field name upper-cased.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor._io import read_yaml

ENV_PREFIX = "FRAMEWATCH_"
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
# The embedder file everything uses unless told otherwise: the per-channel int8 export. It embeds 1.8-2x faster
# than the fp32 "model.onnx" at 64-256 tokens on these CPUs (framing as a whole: 1.45x), and framing accuracy on
# every evaluation set was the same within a prompt or two (docs/deployment.md); "model.onnx" stays available
# for exact sentence-transformers parity.
DEFAULT_EMBEDDING_ONNX_FILE = "model.int8.onnx"
# What a dead letter may carry besides its value: the original key and headers (each capped below) and the
# framewatch.* headers. dlq_max_value_bytes plus this must fit the producer's max_request_size.
DLQ_HEADROOM_BYTES = 32_768


def default_model_dir() -> Path:
    """Where ``build-model`` writes the embedder by default: ``<repo>/models/minilm``.

    The sidecar reads ``Settings.model_dir`` (``$FRAMEWATCH_MODEL_DIR``), which defaults to this.
    """
    return REPO_DIR / "models" / "minilm"


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the setting and its source."""


@dataclass
class Settings:
    # Kafka
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic: str = "llm.inferences"
    kafka_group_id: str = "framewatch"
    dlq_topic: str = "llm.inferences.dlq"
    kafka_client_id: str = "framewatch"
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    kafka_auto_offset_reset: str = "earliest"
    kafka_max_poll_records: int = 256
    kafka_session_timeout_ms: int = 10000
    kafka_poll_timeout_ms: int = 500
    # Verify each fetched batch's CRC32C in the consumers. Off by default: kafka-python computes it in pure
    # Python (its C path needs the `crc32c` package, not a dependency here), which on 2-8 KB events was a
    # fifth of the consumer thread; the broker checks CRCs on produce and every record is schema-validated.
    kafka_check_crcs: bool = False
    # Faults (monitor.sidecar.faults): dead-letter sizes, poison-pill guard
    kafka_max_request_size: int = 1_048_576  # the producers' max_request_size (kafka-python's default, 1 MiB)
    dlq_max_value_bytes: int = 1_000_000  # larger dead-letter values are truncated (headers keep size + sha256)
    poison_max_attempts: int = 3  # the same offset failing processing this often in a row is dead-lettered
    # HTTP
    http_host: str = "0.0.0.0"
    http_port: int = 9464
    http_max_body_bytes: int = 1_048_576  # any request body larger than this is refused with 413
    # Event limits
    max_event_bytes: int = 1_000_000
    max_prompt_chars: int = 100_000
    max_response_chars: int = 200_000
    max_messages: int = 256
    # Input format: json (the README event) | otlp (OTel Collector Kafka exporter traces) | auto (per record)
    input_format: str = "json"
    # Models
    model_dir: str = field(default_factory=lambda: str(default_model_dir()))
    embedding_cache_size: int = 50_000
    framing_cache_size: int = 200_000  # segment verdicts kept by the framing detector (LRU)
    framing_user_segment_budget: int = 3  # new user-turn segments embedded per prompt, at most (docs/registry.md)
    framing_system_segment_budget: int = 8  # new system-prompt segments embedded per prompt (then cached)
    embedding_batch_size: int = 64
    embedding_max_tokens: int = 256
    onnx_threads: int = 0  # 0 = onnxruntime's choice (all cores)
    # The per-channel int8 export: ~2x faster than "model.onnx" (fp32) at 64 tokens; see docs/deployment.md
    embedding_onnx_file: str = DEFAULT_EMBEDDING_ONNX_FILE
    # Detection and scoring (filled by framing.py / scoring.py)
    registry_path: str | None = None  # None = the registry shipped in the package
    classifier_dir: str | None = None  # None = the classifier shipped in the package
    response_prefix_chars: int = 2000
    # Metrics
    model_allowlist: list[str] = field(default_factory=list)
    # Triage: flagged-events topic, incidents, admin API, emerging framings (monitor.triage.service)
    flagged_topic: str = "llm.inferences.flagged"
    redaction: str = "truncate:80"  # none | truncate:N | hash: text in the flagged topic, API and UI
    admin_token: str | None = None  # None = admin endpoints disabled (403)
    incidents_capacity: int = 2000  # flagged records kept in memory for /v1/incidents
    incidents_rebuild: bool = True  # read the flagged topic (from its tail) into /v1/incidents
    incidents_max_bytes: int = 16_000_000  # ... and at most this much JSON of them
    emerging_min_events: int = 30  # events a candidate needs before it can be significant
    emerging_max_candidates: int = 256
    emerging_max_members: int = 8  # member sentences kept per candidate
    emerging_max_examples: int = 5  # redacted examples kept per candidate
    emerging_join_threshold: float = 0.8  # cosine to a candidate centroid to count as the same framing
    emerging_half_life_s: float = 3600.0  # candidate counts decay with this half-life
    # Shared triage view (docs/triage.md): every replica writes evidence and reads every replica's
    triage_shared: bool = True  # false = each replica's own view (single replica, no evidence topic)
    evidence_topic: str = "llm.inferences.evidence"  # per-batch evidence for emerging framings and rates
    evidence_window_s: float = 14400.0  # evidence read at start, and candidate age-out
    evidence_max_record_bytes: int = 900_000  # a batch's evidence is split into records below this
    registry_topic: str = "framewatch.registry"  # compacted topic of admin edits; "" = edit the registry file
    triage_create_topics: bool = True  # create the evidence (and registry, compacted) topics if missing
    triage_topic_replication: int = -1  # replication factor when creating them; -1 = the broker's default
    # Tap: `framewatch tap`, the OpenAI-compatible reverse proxy that publishes events (monitor.tap, docs/tap.md)
    tap_host: str = "0.0.0.0"
    tap_port: int = 8001
    tap_upstream: str = "http://127.0.0.1:8000"  # the inference server the tap forwards every request to
    tap_metrics_port: int = 9465  # the tap's own /metrics and probes: a port of its own, no upstream path shadowed
    tap_queue_size: int = 1000  # exchanges waiting for the producer; beyond it they are dropped (queue_full)
    tap_max_body_bytes: int = 1_048_576  # request/response bodies larger than this pass through, uncaptured
    tap_upstream_timeout_s: float = 600.0  # longest wait for the upstream's next bytes (a read timeout)
    tap_upstream_connect_timeout_s: float = 5.0
    tap_max_connections: int = 512  # pooled keep-alive connections to the upstream
    tap_publish_timeout_ms: int = 30_000  # an event not acknowledged by then is dropped (publish_failed)
    # Logging
    log_level: str = "info"
    log_text: bool = False  # never log raw prompt/response text unless the operator turns this on

    @classmethod
    def load(cls, config_file: str | os.PathLike[str] | None = None, env: typing.Mapping[str, str] | None = None
             ) -> Settings:
        """Defaults, then the YAML file, then the environment (env wins)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        config_file = config_file or env.get(ENV_PREFIX + "CONFIG")
        if config_file:
            path = Path(config_file)
            loaded = read_yaml(path, "config file", SettingsError) or {}
            if not isinstance(loaded, dict):
                raise SettingsError(f"config file {path} must hold a mapping of setting: value")
            for key, raw in loaded.items():
                values[key] = _coerce(key, raw, f"{path}")
        for f in dataclasses.fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if name in env:
                values[f.name] = _coerce(f.name, env[name], f"${name}")
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 0 < self.http_port < 65536:
            raise SettingsError(f"http_port must be 1-65535, got {self.http_port}")
        for name in ("tap_port", "tap_metrics_port"):
            if not 0 < getattr(self, name) < 65536:
                raise SettingsError(f"{name} must be 1-65535, got {getattr(self, name)}")
        if self.tap_port == self.tap_metrics_port:
            raise SettingsError("tap_port and tap_metrics_port must differ")
        if not self.tap_upstream.startswith(("http://", "https://")):
            raise SettingsError(f"tap_upstream must be an http:// or https:// URL, got {self.tap_upstream!r}")
        if min(self.tap_queue_size, self.tap_max_body_bytes, self.tap_max_connections,
               self.tap_publish_timeout_ms) < 1 or min(self.tap_upstream_timeout_s,
                                                       self.tap_upstream_connect_timeout_s) <= 0:
            raise SettingsError("tap_queue_size, tap_max_body_bytes, tap_max_connections, tap_publish_timeout_ms "
                                "and the tap timeouts must be > 0")
        if self.input_format not in {"json", "otlp", "auto"}:
            raise SettingsError(f"input_format must be 'json', 'otlp' or 'auto', got {self.input_format!r}")
        if self.kafka_max_poll_records < 1:
            raise SettingsError("kafka_max_poll_records must be >= 1")
        if not 0 < self.dlq_max_value_bytes <= self.kafka_max_request_size - DLQ_HEADROOM_BYTES:
            raise SettingsError(f"dlq_max_value_bytes must be in 1..kafka_max_request_size - {DLQ_HEADROOM_BYTES} "
                                "(room for the key and headers of a dead letter)")
        if min(self.poison_max_attempts, self.http_max_body_bytes) < 1 or self.framing_cache_size < 0:
            raise SettingsError("poison_max_attempts and http_max_body_bytes must be >= 1, framing_cache_size >= 0")
        protocols = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
        if self.kafka_security_protocol not in protocols:
            raise SettingsError(f"kafka_security_protocol must be one of {sorted(protocols)}")
        if self.kafka_auto_offset_reset not in {"earliest", "latest"}:
            raise SettingsError("kafka_auto_offset_reset must be 'earliest' or 'latest'")
        if not (self.redaction in {"none", "hash"} or self.redaction.startswith("truncate:")):
            raise SettingsError(f"redaction must be 'none', 'truncate:N' or 'hash', got {self.redaction!r}")
        if not 0.0 < self.emerging_join_threshold <= 1.0:
            raise SettingsError("emerging_join_threshold must be in (0, 1]")
        if min(self.emerging_min_events, self.emerging_max_candidates, self.incidents_capacity) < 1:
            raise SettingsError("emerging_min_events, emerging_max_candidates and incidents_capacity must be >= 1")
        if min(self.incidents_max_bytes, self.emerging_max_members, self.emerging_max_examples,
               self.evidence_max_record_bytes) < 1 or self.evidence_window_s <= 0:
            raise SettingsError("incidents_max_bytes, emerging_max_members, emerging_max_examples, "
                                "evidence_max_record_bytes and evidence_window_s must be > 0")

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked, safe to log."""
        out = dataclasses.asdict(self)
        for key in ("kafka_sasl_password", "admin_token"):
            if out.get(key):
                out[key] = "***"
        return out


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_HINTS = typing.get_type_hints(Settings)


def _coerce(name: str, raw: Any, source: str) -> Any:
    """Turn a YAML or env value into the field's type, with an error that names the setting and source."""
    if name not in _FIELDS:
        raise SettingsError(f"unknown setting {name!r} in {source}")
    hint = _HINTS[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if isinstance(hint, types.UnionType) else hint
    if raw is None or (optional and isinstance(raw, str) and raw == ""):
        if optional:
            return None
        raise SettingsError(f"{name} ({source}) may not be empty")
    try:
        if base is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if base is int:
            if isinstance(raw, bool):
                raise ValueError("boolean given")
            return int(raw)
        if base is float:
            return float(raw)
        if typing.get_origin(base) is list:
            if isinstance(raw, str):
                return [item.strip() for item in raw.split(",") if item.strip()]
            if isinstance(raw, list):
                return [str(item) for item in raw]
            raise ValueError("expected a list or comma-separated string")
        return str(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} ({source}): {exc}") from exc
