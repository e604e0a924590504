"""Structured JSON logs (structlog). Raw prompt/response text is never logged unless ``log_text`` is on.

Call sites pass text only through :func:`text_field`, which returns the text when the operator enabled
``FRAMEWATCH_LOG_TEXT=true`` and a length marker otherwise; the rule lives in one place.
"""

from __future__ import annotations

import json
import logging
import sys

import structlog

_log_text = False


def configure(level: str = "info", log_text: bool = False) -> None:
    global _log_text
    _log_text = log_text
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    # Libraries (kafka-python, uvicorn) log through the stdlib: render them as JSON lines too.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler], force=True)
    # kafka-python logs every failed reconnect; our own "kafka_broker_unreachable" says it once.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"event": record.getMessage(), "logger": record.name, "level": record.levelname.lower(),
               "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S")}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def text_field(text: str | None) -> str | None:
    """The text itself if the operator turned text logging on, else only its length."""
    if text is None:
        return None
    return text if _log_text else f"<{len(text)} chars redacted>"


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
