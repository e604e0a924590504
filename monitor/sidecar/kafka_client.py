"""How every Framewatch Kafka client connects, and whether the broker answers at all.

One owner for the connection settings (bootstrap list, client id, SASL, TLS) because the sidecar's consumer and
dead-letter producer, the triage publishers and followers, and the tap's producer must all reach the same
cluster the same way: a TLS option added here reaches every one of them. The reachability probe is a plain
TCP connect, so readiness can be judged without a Kafka client (one blocked on a send cannot report anything).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from monitor.settings import Settings

PROBE_TIMEOUT_S = 1.0


def kafka_client_config(settings: Settings) -> dict[str, Any]:
    """Connection settings shared by the consumer and the producers (SASL/SSL included)."""
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.kafka_bootstrap_servers.split(",") if s.strip()],
        "client_id": settings.kafka_client_id,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_sasl_mechanism:
        config.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                      sasl_plain_username=settings.kafka_sasl_username,
                      sasl_plain_password=settings.kafka_sasl_password)
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, f"kafka_{key}")
        if value:
            config[key] = value
    return config


def broker_reachable(bootstrap: Iterable[str], timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when any bootstrap server accepts a TCP connection: the loop-independent half of readiness."""
    for server in bootstrap:
        host, _, port = server.rpartition(":")
        host = host.strip("[]") or "localhost"
        try:
            with socket.create_connection((host, int(port or 9092)), timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False
