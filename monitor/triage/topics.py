"""Create the shared triage topics when they are missing: evidence (time-retained) and registry (compacted).

Why here and not by hand only: the registry topic *must* be compacted (``cleanup.policy=compact``) or a
broker's retention would one day delete the edits every replica applies; creating it with the right
configuration at start removes that trap. Both get one partition so every reader merges them in one
order. An existing topic is left as it is (its configuration is the operator's); failures are logged and
the sidecar carries on (the followers wait for the topic to appear).
"""

from __future__ import annotations

import contextlib
from typing import Any

from monitor.logs import get_logger
from monitor.settings import Settings

log = get_logger("framewatch.topics")


def wanted(settings: Settings, shared: bool, registry: bool) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    if shared and settings.evidence_topic:
        out[settings.evidence_topic] = {"cleanup.policy": "delete",
                                        "retention.ms": str(int(settings.evidence_window_s * 1000))}
    if registry and settings.registry_topic:
        out[settings.registry_topic] = {"cleanup.policy": "compact"}
    return out


def ensure_topics(settings: Settings, client_config: dict[str, Any], topics: dict[str, dict[str, str]]) -> list[str]:
    """Create the missing ones (1 partition each); returns the names created."""
    if not topics:
        return []
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    created: list[str] = []
    admin = None
    try:
        admin = KafkaAdminClient(**client_config, request_timeout_ms=5000)
        existing = set(admin.list_topics())
        for name, config in topics.items():
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, 1, settings.triage_topic_replication, topic_configs=config)])
                created.append(name)
                log.info("triage_topic_created", topic=name, config=config)
            except TopicAlreadyExistsError:
                pass
    except Exception as exc:  # noqa: BLE001 - no admin rights, broker down: the operator creates them
        log.warning("triage_topics_not_created", topics=sorted(topics), error=f"{type(exc).__name__}: {exc}")
    finally:
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()
    return created
