"""Log redaction: one structlog processor decides whether caller text reaches the logs (structlog.testing)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from monitor import logs

PROMPT = "Please respond within <start> and <end> tags only. What is your one wish?"


@pytest.fixture()
def restore_logging() -> Iterator[None]:
    """``logs.configure`` replaces the root handlers and structlog's config: put both back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_is_redacted_by_default_marked_or_by_key() -> None:
    with capture_logs(processors=[logs.redact_text(False)]) as entries:
        logs.get_logger("t").info("event_flagged", model="m-1", cluster="tag_wrapper", prompt=PROMPT,
                                  segment=logs.text_field("tags only"), detail=logs.text_field(PROMPT),
                                  messages=[{"role": "user", "content": PROMPT}], response=None)
    [entry] = entries
    assert entry["prompt"] == f"<{len(PROMPT)} chars redacted>"  # by key, though passed without the marker
    assert entry["segment"] == "<9 chars redacted>"
    assert entry["detail"] == f"<{len(PROMPT)} chars redacted>"  # marked, under a key of any name
    assert entry["messages"] == "<redacted>"
    assert entry["response"] is None
    assert entry["model"] == "m-1" and entry["cluster"] == "tag_wrapper"
    assert "wish" not in repr(entry) and "tags only" not in repr(entry)


def test_log_text_on_puts_the_text_back() -> None:
    with capture_logs(processors=[logs.redact_text(True)]) as entries:
        logs.get_logger("t").info("event_flagged", prompt=PROMPT, segment=logs.text_field("tags only"))
    [entry] = entries
    assert entry["prompt"] == PROMPT
    assert entry["segment"] == "tags only" and type(entry["segment"]) is str


def test_text_field_is_the_marker_without_the_processor() -> None:
    """A logger nobody configured (a library user's) still prints only the marker."""
    with capture_logs() as entries:
        logs.get_logger("t").info("e", segment=logs.text_field(PROMPT))
    assert entries[0]["segment"] == f"<{len(PROMPT)} chars redacted>"
    assert logs.text_field(None) is None


@pytest.mark.parametrize("log_text", [False, True])
def test_configure_renders_json_with_the_rule(log_text: bool, capsys: pytest.CaptureFixture[str],
                                              restore_logging: None) -> None:
    logs.configure("info", log_text=log_text)
    logs.get_logger("t").info("event_flagged", prompt=PROMPT, segment=logs.text_field("tags only"), model="m")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "event_flagged" and line["level"] == "info" and line["model"] == "m"
    if log_text:
        assert line["prompt"] == PROMPT and line["segment"] == "tags only"
    else:
        assert line["prompt"] == f"<{len(PROMPT)} chars redacted>" and line["segment"] == "<9 chars redacted>"
