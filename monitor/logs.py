"""Structured JSON logs (structlog). Raw prompt/response text is never logged unless ``log_text`` is on.

The rule lives in one structlog processor, :func:`redact_text`, in the chain :func:`configure` installs. It
redacts two things: values a call site marked with :func:`text_field` (whatever their key), and any string
under a key that by name carries caller text (:data:`TEXT_KEYS`), so text passed by mistake without the
marker is still not written. Unmarked text is the failure this guards against: logs go to more places, and
are kept longer, than the inference traffic they describe.

:func:`text_field` is safe on its own too: its value *is* the redaction marker and the text rides along on
an attribute, so a logger that was never configured (a library user's, a test's) prints the marker; only the
processor, with ``log_text`` on, puts the text back.
"""

from __future__ import annotations

import json
import logging
import sys

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

#: Event-dict keys whose string values are caller text (prompts, responses, the segments cut from them).
TEXT_KEYS = frozenset({"prompt", "response", "system_prompt", "messages", "segment", "text", "content",
                       "completion", "body"})


class LogText(str):
    """A log value standing for some caller text: the string is the redaction marker, ``.text`` the text."""

    text: str

    def __new__(cls, text: str) -> LogText:
        marked = super().__new__(cls, _marker(text))
        marked.text = text
        return marked


def _marker(text: str) -> str:
    return f"<{len(text)} chars redacted>"


def text_field(text: str | None) -> LogText | None:
    """Mark ``text`` as caller text for the log: :func:`redact_text` shows it only with ``log_text`` on."""
    return None if text is None else LogText(text)


def redact_text(log_text: bool = False) -> Processor:
    """The structlog processor that applies the text rule (see the module docstring) to every event."""

    def processor(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        for key, value in event_dict.items():
            if isinstance(value, LogText):
                event_dict[key] = value.text if log_text else str(value)
            elif not log_text and key in TEXT_KEYS and value is not None:
                event_dict[key] = _marker(value) if isinstance(value, str) else "<redacted>"
        return event_dict

    return processor


def processors(log_text: bool = False) -> list[Processor]:
    """The processor chain of :func:`configure`, JSON rendering last (also what tests configure)."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_text(log_text),
        structlog.processors.JSONRenderer(),
    ]


def configure(level: str = "info", log_text: bool = False) -> None:
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    # Libraries (kafka-python, uvicorn) log through the stdlib: render them as JSON lines too.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler], force=True)
    # kafka-python logs every failed reconnect; our own "kafka_broker_unreachable" says it once.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    structlog.configure(
        processors=processors(log_text),
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


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
