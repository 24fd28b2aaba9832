"""The log's two formats, and the access line written for each request.

``text`` (the default) is gunicorn's own format followed by the id of the request a line was written for;
``json`` (``OPTIM_LOG_FORMAT=json``) is one JSON object a line, for a log collector to read: ``time`` (UTC,
ISO 8601), ``level``, ``logger``, ``message``, ``request_id`` (null outside a request), ``process``, and
on the access line ``method``, ``route``, ``status``, ``duration_ms``, and ``session_id`` and ``step`` where
the request has them. Both formats read the request's id from ``api/request_ids.RequestIdFilter``.
"""

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s%(request)s"
"""gunicorn's own format, and the id of the request a line was written for (``RequestIdFilter``)."""
TEXT_DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"
LOG_FORMATS = ("text", "json")
ACCESS_LOGGER = "service.access"
ACCESS_FIELDS = ("method", "route", "status", "duration_ms", "session_id", "step")
"""What the access line carries besides its message, as fields of a JSON line."""

access_log = logging.getLogger(ACCESS_LOGGER)


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON (control characters, newlines included, escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            # RequestIdFilter's ``request`` is empty outside a request.
            "request_id": getattr(record, "request_id", None) if getattr(record, "request", "") else None,
            "process": record.process,
        }
        for field in ACCESS_FIELDS:
            if field in record.__dict__:
                line[field] = record.__dict__[field]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of the format named ``log_format`` (one of ``LOG_FORMATS``)."""
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT, TEXT_DATE_FORMAT)


def log_access(
    *, method: str, route: str, status: int, seconds: float, session_id: str | None, step: int | None
) -> None:
    """The access line of an answered request: ``POST /v1/sessions/{session_id}/step 200 1.2 ms session=...
    step=7`` in text, its fields in JSON."""
    duration_ms = round(seconds * 1000, 3)
    fields: dict[str, Any] = {"method": method, "route": route, "status": status, "duration_ms": duration_ms}
    message = f"{method} {route} {status} {duration_ms:g} ms"
    if session_id is not None:
        fields["session_id"] = session_id
        message += f" session={session_id}"
    if step is not None:
        fields["step"] = step
        message += f" step={step}"
    access_log.info(message, extra=fields)
