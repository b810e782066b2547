"""Structured JSON logs with the request id of the request being handled."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else passed with ``extra=`` goes into the JSON.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# uvicorn adds the message again with terminal colour codes: not for a log pipeline.
_STANDARD.add("color_message")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and extras."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            payload["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


# uvicorn's own loggers: its startup and shutdown lines, errors, and the access log when on.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def configure_logging(level: str) -> None:
    """Send the ``guard`` loggers and uvicorn's own to stderr as JSON lines, one handler for all.
    Idempotent (tests build many apps). uvicorn configures its loggers before it imports the
    app, so their plain-text handlers are replaced here; every line it logs after that (server
    started, shutdown, errors) is JSON too."""
    handler = next(
        (h for h in logging.getLogger("guard").handlers if getattr(h, "_guard_json", False)),
        None,
    )
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._guard_json = True  # type: ignore[attr-defined]
    logging.getLogger("guard").setLevel(level)
    for name in ("guard", *UVICORN_LOGGERS):
        logger = logging.getLogger(name)
        if name == "uvicorn.access" and not logger.handlers:
            # --no-access-log: uvicorn took its handlers away and logs access lines only while
            # the logger has one; the guard's own access line (guard.access) stays.
            continue
        logger.handlers = [handler]
        logger.propagate = False
